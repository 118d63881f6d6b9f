"""Put a patient's new files on its model grid, each visit rigidly aligned to the baseline.

A visit reuses its stored alignment while its reference contrast is unchanged; otherwise its
reference contrast is aligned to the baseline's (``mtlgen.preprocess.align``). Images are
resampled (linear) and scaled on normal tissue; a follow-up's image is then matched to the
baseline's image of the same contrast, its scale and its smooth bias field
(``mtlgen.preprocess.intensity``); labels are resampled
(nearest). The files are written as NIfTI under ``preprocess.out_dir/<pseudonym>/<visit>/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from mtlgen.config import Params
from mtlgen.io.nifti import save_nifti
from mtlgen.io.source_types import LABEL
from mtlgen.io.validate import Volume
from mtlgen.preprocess.align import AlignmentFailed, ncc, rigid_align
from mtlgen.preprocess.grid import Grid
from mtlgen.preprocess.intensity import (
    foreground,
    match_bias_field,
    match_reference,
    scale_on_tissue,
)
from mtlgen.preprocess.resample import resample_to_grid
from mtlgen.progression import voxel_spacing_mm
from mtlgen.register.checks import Pending
from mtlgen.register.quality import alignment_problem
from mtlgen.register.results import Ledger
from mtlgen.registry.models import CURRENT, Patient, Visit
from mtlgen.registry.record import ScanRecord


@dataclass
class _Baseline:
    """The patient's model grid, its baseline reference image on it (``fixed``), and the
    baseline's image of any contrast with its head mask, looked up once (from this run's files,
    else from disk)."""

    patient: Patient
    pending: list[Pending]
    params: Params
    grid: Grid
    fixed: np.ndarray = field(init=False)
    mask: np.ndarray = field(init=False)
    images: dict[str, np.ndarray | None] = field(default_factory=dict)
    heads: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        fixed = self.image(self.patient.reference)
        if fixed is None:
            raise RuntimeError(
                f"patient {self.patient.pseudonym}: baseline reference is not registered"
            )
        self.fixed, self.mask = fixed, fixed > 0.1

    def image(self, contrast: str) -> np.ndarray | None:
        """The baseline's image of ``contrast`` on the grid (None if it has none)."""
        if contrast not in self.images:
            self.images[contrast] = baseline_image(
                self.patient, self.pending, self.grid, self.params, contrast
            )
        return self.images[contrast]

    def head(self, contrast: str) -> np.ndarray:
        """The head (Otsu foreground) of the baseline's image of ``contrast``, which exists."""
        if contrast not in self.heads:
            image = self.images[contrast]
            self.heads[contrast] = foreground(image, image > 0)
        return self.heads[contrast]


def pick_reference(available: list[str], preferred: list[str]) -> str:
    """The first of ``preferred`` contrasts that is ``available`` (else the first by name)."""
    for modality in preferred:
        if modality in available:
            return modality
    return sorted(available)[0]


def grid_image(vol: Volume, grid: Grid, to_baseline: np.ndarray, params: Params):
    """An image resampled onto the grid and scaled on normal tissue, and the mask of grid voxels
    inside it."""
    pre = params.preprocess
    values, inside = resample_to_grid(vol, grid, to_baseline, order=1)
    scaled = scale_on_tissue(
        values, inside, pre.intensity_floor_percentile, pre.intensity_tissue_value
    )
    return scaled, inside


def process(
    patient: Patient, pending: list[Pending], params: Params, ledger: Ledger
) -> list[Pending]:
    """Align each visit with new files to the baseline and write them on the model grid;
    returns the files written (the others are rejected)."""
    if not pending:
        return pending
    base = _Baseline(patient, pending, params, Grid.from_json(patient.grid))
    visits = {v.key: v for v in patient.visits}
    by_visit: dict[str, list[Pending]] = {}
    for p in pending:
        by_visit.setdefault(p.visit.visit_id, []).append(p)
    for visit_id, files in by_visit.items():
        alignment = _alignment(patient, visits.get(visit_id), visit_id, files, base, params, ledger)
        if alignment is not None:
            _write_on_grid(patient, visit_id, files, alignment, base, params)
    return [p for p in pending if p.processed is not None]


def _alignment(
    patient: Patient,
    visit: Visit | None,
    visit_id: str,
    files: list[Pending],
    base: _Baseline,
    params: Params,
    ledger: Ledger,
) -> tuple[np.ndarray, float | None, str] | None:
    """(to_baseline, mi, reference contrast) of a visit; None (its files rejected) if it has
    no usable alignment."""
    if visit_id == patient.baseline_visit:
        return np.eye(4), None, patient.reference
    pre = params.preprocess
    images = {p.scan.modality: p for p in files if p.scan.modality != LABEL}
    transform, mi, reference = stored_alignment(visit, images)
    if transform is not None:
        return transform, mi, reference
    if not images:  # a new label for a visit without usable alignment
        for p in files:
            ledger.reject(p.visit, p.scan, "visit has no aligned image", p.sha)
        return None
    reference = pick_reference(list(images), [patient.reference, *pre.reference_contrasts])
    try:
        alignment = rigid_align(base.fixed, base.grid, images[reference].volume, pre)
    except AlignmentFailed as exc:
        for p in files:
            ledger.reject(p.visit, p.scan, f"{reference} {exc}", p.sha)
        return None
    return alignment.to_baseline, alignment.mi, reference


def _write_on_grid(
    patient: Patient,
    visit_id: str,
    files: list[Pending],
    alignment: tuple[np.ndarray, float | None, str],
    base: _Baseline,
    params: Params,
) -> None:
    """Resample a visit's files onto the grid, write them and set their ``processed`` and
    ``result``; a follow-up whose alignment is implausible is held for review, all its files."""
    transform, mi, reference = alignment
    grid = base.grid
    out_dir = params.preprocess.out_dir / patient.pseudonym / visit_id
    for p in files:
        if p.scan.modality == LABEL:
            values, _ = resample_to_grid(p.volume, grid, transform, order=0)
            p.processed = out_dir / f"dseg-{p.sha[:12]}.nii"
            save_nifti(p.processed, np.rint(values), grid.affine, dtype=np.uint8)
            quality = None
        else:
            image, inside = grid_image(p.volume, grid, transform, params)
            same = p.scan.modality == patient.reference and visit_id != patient.baseline_visit
            # before the intensity match: NCC ignores scale, and a bias-field match could
            # make any image resemble its baseline
            quality = ncc(image, base.fixed, base.mask & inside) if same else None
            if visit_id != patient.baseline_visit and params.preprocess.intensity_match_baseline:
                image = _matched(image, inside, base, p.scan.modality, params)
            p.processed = out_dir / f"{p.scan.modality}-{p.sha[:12]}.nii"
            save_nifti(p.processed, image, grid.affine, dtype=np.float32)
        p.result = {"to_baseline": transform, "reference": reference, "mi": mi, "ncc": quality}
    if visit_id != patient.baseline_visit:
        nccs = [p.result["ncc"] for p in files if p.result["ncc"] is not None]
        problem = alignment_problem(min(nccs) if nccs else None, mi, params.registry)
        for p in files:
            p.review = problem or p.review


def _matched(
    image: np.ndarray, inside: np.ndarray, base: _Baseline, contrast: str, params: Params
) -> np.ndarray:
    """A follow-up image scaled onto its baseline's image of the same contrast over the head in
    both, then freed of the smooth bias field between the two (unchanged when the baseline lacks
    that contrast)."""
    reference = base.image(contrast)
    if reference is None:
        return image
    head = foreground(image, inside) & base.head(contrast)
    image = match_reference(image, reference, head)[0]
    sigma_mm = params.preprocess.intensity_bias_sigma_mm
    if sigma_mm > 0:
        spacing = voxel_spacing_mm(base.grid.affine)
        image = match_bias_field(image, reference, head, sigma_mm, spacing)[0]
    return image


def stored_alignment(visit: Visit | None, images: dict[str, Pending]):
    """Reuse a visit's alignment when its reference contrast is unchanged."""
    for scan in visit.scans if visit else []:
        if scan.status == CURRENT and scan.result is not None:
            reference = scan.result.reference
            if reference not in images:
                transform = np.asarray(json.loads(scan.result.to_baseline))
                return transform, scan.result.mi, reference
    return None, None, None


def baseline_image(
    patient: Patient, pending: list[Pending], grid: Grid, params: Params, contrast: str
) -> np.ndarray | None:
    """The baseline's image of ``contrast`` on the grid: new if it is pending, else from disk;
    None if the baseline has no such image."""
    for p in pending:
        if p.visit.visit_id == patient.baseline_visit and p.scan.modality == contrast:
            return grid_image(p.volume, grid, np.eye(4), params)[0]
    for visit in patient.visits:
        if visit.key == patient.baseline_visit:
            for scan in visit.scans:
                if scan.status == CURRENT and scan.modality == contrast:
                    img = nib.load(scan.result.processed_path)
                    return np.asarray(img.get_fdata(dtype=np.float32))
    return None


def scan_record(p: Pending) -> ScanRecord:
    """A processed file as the registry records it."""
    vol = p.volume
    return ScanRecord(
        visit_key=p.visit.visit_id,
        visit_date=p.visit.date,
        days=p.days,
        modality=p.scan.modality,
        source_path=str(p.scan.path),
        sha256=p.sha,
        shape=tuple(vol.data.shape),
        spacing=vol.spacing,
        orientation=vol.orientation,
        processed_path=str(p.processed),
        to_baseline=p.result["to_baseline"],
        reference=p.result["reference"],
        mi=p.result["mi"],
        ncc=p.result["ncc"],
        review=p.review,
    )
