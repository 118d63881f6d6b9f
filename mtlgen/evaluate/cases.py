"""The cases an evaluation scores and what their truth says, independent of any predictor.

Cases come from ``mtlgen.data.samples.enumerate_samples`` (future and reconstruction targets)
plus one ``current`` case per labelled visit. Truth that does not depend on the predictor (brain
and changing regions, true volume and status) is computed once per case.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from mtlgen.config import EvaluateConfig, ProgressionConfig
from mtlgen.data.samples import enumerate_samples
from mtlgen.data.splits import Split
from mtlgen.evaluate.metrics import brain_region, changing_region, near_region
from mtlgen.inference.baselines import reference_visit
from mtlgen.inference.prediction import Predictor
from mtlgen.io.series import PatientSeries, VisitArrays, load_visit
from mtlgen.progression import Status, label_volume_ml, progression_status, voxel_spacing_mm

log = logging.getLogger(__name__)

# future / reconstruction: ``enumerate_samples``; current: segment an observed visit whose
# label the predictor does not see, given the labels of the visits before it (the first visit
# of a series is segmented from its images alone); unlabelled: the same visits in a series
# with no mask at all (a clinic's new patient), segmented from the images alone
KINDS: tuple[str, ...] = ("future", "reconstruction", "current", "unlabelled")
SEGMENTATION_KINDS = frozenset({"current", "unlabelled"})


@dataclass
class CaseTruth:
    """What a case's truth says, independent of any predictor."""

    patient: str
    kind: str
    context: tuple[VisitArrays, ...]
    target: VisitArrays
    reference: VisitArrays
    brain: np.ndarray
    change: np.ndarray | None  # None without target and reference labels
    near: np.ndarray | None  # the reference lesion's neighbourhood; None without a lesion there
    volume_ml: float | None  # None without a target label
    status: Status | None  # None without target and reference labels
    data_range: dict[str, float]  # contrast -> range of the true image inside the brain
    ssim_window: int
    interval_level: float = 0.8  # of sample intervals (``progression.interval_level``)

    @property
    def case_id(self) -> str:
        context = ",".join(v.visit for v in self.context)
        return f"{self.patient}:{self.kind}:{context}->{self.target.visit}"


def visit_brain(visit: VisitArrays, cfg: EvaluateConfig) -> np.ndarray:
    """The union of every contrast's ``brain_region`` of ``visit``."""
    brain = np.zeros(next(iter(visit.images.values())).shape, bool)
    for image in visit.images.values():
        brain |= brain_region(image, cfg.brain_fraction, cfg.brain_sigma_vox)
    return brain


def case_truth(
    patient: str,
    kind: str,
    context: Sequence[VisitArrays],
    target: VisitArrays,
    cfg: EvaluateConfig,
    progression: ProgressionConfig,
) -> CaseTruth:
    """Brain, changing and near regions, true core volume and status of one case. The near
    region is chosen from the inputs alone (the reference visit's lesion and brain)."""
    reference = reference_visit(context, target.days)
    brain = visit_brain(target, cfg)
    data_range = {}
    for contrast, image in target.images.items():
        inside = image[brain]
        data_range[contrast] = float(inside.max() - inside.min()) if inside.size else 0.0
    change = volume = status = near = None
    if reference.label is not None:
        ref_brain = visit_brain(reference, cfg)
        spacing = voxel_spacing_mm(reference.affine)
        near = near_region(reference.label, spacing, cfg.near_mm, ref_brain)
    if target.label is not None:
        volume = label_volume_ml(target.label, target.affine)
    if volume is not None and reference.label is not None:
        change = changing_region(reference.label, target.label, cfg.changing_dilation_vox) & brain
        ref_ml = label_volume_ml(reference.label, reference.affine)
        status = progression_status(ref_ml, volume, progression.increase, progression.decrease)
    return CaseTruth(
        patient,
        kind,
        tuple(context),
        target,
        reference,
        brain,
        change,
        near,
        volume,
        status,
        data_range,
        cfg.ssim_window,
        progression.interval_level,
    )


def case_specs(
    patient: PatientSeries, max_context: int, reconstruction: bool
) -> list[tuple[str, tuple[int, ...], int]]:
    """(kind, context indices, target index) of every case of one patient: the samples of
    ``enumerate_samples``, then one ``current`` and one ``unlabelled`` case per labelled visit
    (context: that visit and the visits before it, up to ``max_context``; the labels hidden are
    that visit's, or every one)."""
    specs = [
        (s.kind, s.context, s.target)
        for s in enumerate_samples(patient, max_context, reconstruction)
    ]
    for kind in ("current", "unlabelled"):
        for j, visit in enumerate(patient.visits):
            if visit.label is not None:
                specs.append((kind, tuple(range(max(0, j + 1 - max_context), j + 1)), j))
    return specs


def loaded_cases(
    series: Sequence[PatientSeries], max_context: int, reconstruction: bool
) -> Iterator[tuple[str, str, list[VisitArrays], VisitArrays]]:
    """(patient, kind, context, target) of every case of ``case_specs``, visits loaded once."""
    for patient in series:
        loaded: dict[int, VisitArrays] = {}
        for kind, context_idx, target in case_specs(patient, max_context, reconstruction):
            for i in (*context_idx, target):
                if i not in loaded:
                    loaded[i] = load_visit(patient.visits[i])
            context = [loaded[i] for i in context_idx]
            if kind == "current":  # its label hidden: the predictor has to segment it
                context[-1] = replace(context[-1], label=None)
            elif kind == "unlabelled":  # no label at all
                context = [replace(v, label=None) for v in context]
            yield patient.patient, kind, context, loaded[target]


def answers(predictor: Predictor, kind: str) -> bool:
    """Whether ``predictor`` is scored on cases of ``kind``: a model without a segmentation
    head does not answer segmentation cases, an image-only segmenter answers only those."""
    if kind in SEGMENTATION_KINDS:
        return getattr(predictor, "segments", True)
    return not getattr(predictor, "segments_only", False)


def select_series(
    series: Sequence[PatientSeries], patients: Sequence[str], role: str
) -> list[PatientSeries]:
    """The series of ``patients`` (the split's ``role`` patients), warning about any without
    one."""
    chosen = [s for s in series if s.patient in set(patients)]
    missing = sorted(set(patients) - {s.patient for s in chosen})
    if missing:
        log.warning("%s patients without registered series (skipped): %s", role, missing)
    return chosen


def select_test_series(series: Sequence[PatientSeries], split: Split) -> list[PatientSeries]:
    """The series of the split's test patients; fails if there are none."""
    chosen = select_series(series, split.test, "test")
    if not chosen:
        raise ValueError(
            f"none of the {len(series)} series belongs to the split's test patients "
            f"{list(split.test)}: is the split from this registry?"
        )
    return chosen
