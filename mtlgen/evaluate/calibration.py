"""Calibration on the validation patients' cases: volume intervals of predictors
(``mtlgen.inference.intervals``), for evaluation and for a trained checkpoint, and a trained
checkpoint's image fallback (``mtlgen.inference.fallback``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from mtlgen.config import EvaluateConfig, Params, ProgressionConfig
from mtlgen.data.splits import Split
from mtlgen.evaluate.cases import (
    SEGMENTATION_KINDS,
    answers,
    case_specs,
    loaded_cases,
    select_series,
    visit_brain,
)
from mtlgen.inference.baselines import CopyLast, reference_visit
from mtlgen.inference.fallback import FallbackErrors, ImageFallback, near_lesion
from mtlgen.inference.intervals import VolumeCalibration, VolumeCase, group_of, horizon_days
from mtlgen.inference.model import ModelPredictor, load_predictor
from mtlgen.inference.prediction import Predictor
from mtlgen.io.series import PatientSeries
from mtlgen.progression import label_volume_ml, voxel_spacing_mm

log = logging.getLogger(__name__)


def calibrate_volumes(
    predictors: Sequence[Predictor],
    series: Sequence[PatientSeries],
    progression: ProgressionConfig,
    max_context: int,
    reconstruction: bool = True,
    progress: bool = True,
) -> dict[str, VolumeCalibration]:
    """Each predictor's volume calibration on the labelled cases of ``series`` (the validation
    patients'), by name; a generative predictor's volume is its ``point_forecast``'s."""
    cases: dict[str, list[VolumeCase]] = {p.name: [] for p in predictors}
    specs = sum(len(case_specs(s, max_context, reconstruction)) for s in series)
    bar = tqdm(total=specs, desc="calibrating intervals", unit="case", disable=not progress)
    with bar:
        for _, kind, context, target in loaded_cases(series, max_context, reconstruction):
            bar.update()
            if target.label is None:
                continue
            true_ml = label_volume_ml(target.label, target.affine)
            horizon = horizon_days([v.days for v in context], target.days)
            for predictor in predictors:
                if answers(predictor, kind):
                    point = getattr(predictor, "point_forecast", predictor)
                    pred = point.predict(context, target.days)
                    cases[predictor.name].append(
                        VolumeCase(kind, len(context), horizon, pred.core_volume_ml, true_ml)
                    )
    level, min_days = progression.interval_level, progression.interval_min_days
    return {name: VolumeCalibration.fit(c, level, min_days) for name, c in cases.items()}


def fit_image_fallback(
    predictor: ModelPredictor,
    series: Sequence[PatientSeries],
    cfg: EvaluateConfig,
    max_context: int,
    reconstruction: bool = True,
) -> ImageFallback:
    """The image fallback (``mtlgen.inference.fallback``) of ``predictor``'s network on the
    future and reconstruction cases of ``series`` (the validation patients'): per group, region
    and contrast, the weight of its image change from copy-last with the least error over the
    brain (the evaluation's brain region of the true image)."""
    raw = ModelPredictor(predictor.model, predictor.device)  # its images as the network answers
    copy_last = CopyLast()
    errors = FallbackErrors()
    for _, kind, context, target in loaded_cases(series, max_context, reconstruction):
        if kind in SEGMENTATION_KINDS:
            continue
        model, copy = raw.predict(context, target.days), copy_last.predict(context, target.days)
        reference = reference_visit(context, target.days)
        spacing = voxel_spacing_mm(reference.affine)
        label = reference.label if reference.label is not None else model.label
        near = near_lesion(label, spacing, cfg.near_mm)
        brain = visit_brain(target, cfg)
        group = group_of(kind, len(context))
        for contrast in model.images.keys() & target.images.keys():
            errors.add(
                group,
                contrast,
                model.images[contrast],
                copy.images[contrast],
                target.images[contrast],
                near,
                brain,
            )
    return ImageFallback.fit(errors, cfg.near_mm)


def calibrate_checkpoint(
    params: Params, series: Sequence[PatientSeries], split: Split, checkpoint_dir: Path
) -> Path | None:
    """Calibrate a trained 3-D checkpoint's volume intervals and, with an image head, its image
    fallback on the split's validation patients and save them beside its weights
    (``calibration.json``, ``fallback.json``), so that the registered model carries them into
    ``mtlgen predict``. Returns the intervals' file; None (nothing written) without validation
    patients or for a 2-D model."""
    val_series = select_series(series, split.val, "validation")
    if not val_series:
        log.warning("no validation patients: %s gets no volume intervals", checkpoint_dir)
        return None
    try:
        predictor = load_predictor(checkpoint_dir)
    except ValueError as exc:  # a 2-D model answers slices, not the volumes a case needs
        log.warning("%s: no volume intervals (%s)", checkpoint_dir, exc)
        return None
    calibration = calibrate_volumes(
        [predictor],
        val_series,
        params.progression,
        params.data.max_context,
        params.data.reconstruction,
    )[predictor.name]
    path = calibration.save(checkpoint_dir)
    log.info(
        "volume intervals at level %g calibrated on %d validation cases -> %s",
        calibration.level,
        calibration.cases.get("all", 0),
        path,
    )
    if "image" in predictor.model.tasks:
        fallback = fit_image_fallback(
            predictor,
            val_series,
            params.evaluate,
            params.data.max_context,
            params.data.reconstruction,
        )
        log.info(
            "image fallback on the validation patients (weight of the model's change from "
            "copy-last; 1 keeps it, 0 answers copy-last): %s -> %s",
            fallback.weights.get("all", {}),
            fallback.save(checkpoint_dir),
        )
    return path
