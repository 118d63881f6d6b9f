"""Write a synthetic longitudinal cohort as a BIDS dataset with ground truth beside it.

Layout (``DIR``)::

    dataset_description.json  participants.tsv
    manifest.csv          the same scans as a CSV manifest (patient, visit, date, modality,
                          image, label), for `mtlgen register DIR/manifest.csv`
    sub-001/sub-001_sessions.tsv
    sub-001/ses-01/anat/sub-001_ses-01_T1w.nii.gz  (and _FLAIR where acquired)
    derivatives/labels/sub-001/ses-01/anat/sub-001_ses-01_dseg.nii.gz   0 bg, 1 core, 2 edema
    derivatives/groundtruth/visits.tsv     per-visit volumes, courses, law volume (all lesions)
    derivatives/groundtruth/groundtruth.json  growth laws per lesion, poses, visit->baseline
"""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from mtlgen.config import SynthConfig
from mtlgen.io.atomic import write_text_atomic
from mtlgen.io.nifti import save_nifti
from mtlgen.synth.anatomy import load_anatomy
from mtlgen.synth.patient import PatientModel, RenderedVisit, Visit

log = logging.getLogger(__name__)
GROUNDTRUTH_DIR = Path("derivatives/groundtruth")
LABELS_DIR = Path("derivatives/labels")
_INTENSITY_UNITS = 1000.0  # rendered intensities ~[0, 1.3] are stored x1000


@dataclass(frozen=True)
class CohortSummary:
    out_dir: Path
    patients: int
    visits: int
    images: int


def draw_patient(cfg: SynthConfig, seed: int, index: int) -> PatientModel:
    """Patient ``index`` of the cohort; it depends only on ``(seed, index)``."""
    rng = np.random.default_rng([seed, index])
    return PatientModel.draw(f"{index + 1:03d}", rng, cfg, load_anatomy(cfg.voxel_mm))


def _reorient(data: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """Store the RAS-rendered array in the configured voxel order (same world content)."""
    if axcodes == "RAS":
        return data, affine
    ornt = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(tuple(axcodes))
    )
    moved = nib.orientations.apply_orientation(data, ornt)
    inv = nib.orientations.inv_ornt_aff(ornt, data.shape)
    return np.ascontiguousarray(moved), affine @ inv


def _to_disk_dtype(image: np.ndarray, dtype: str) -> np.ndarray:
    scaled = image * _INTENSITY_UNITS
    if dtype == "float32":
        return scaled.astype(np.float32)
    info = np.iinfo(dtype)
    return np.clip(np.round(scaled), info.min, info.max).astype(dtype)


def _tsv(rows: list[dict], delimiter: str = "\t") -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter=delimiter, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _csv(rows: list[dict]) -> str:
    return _tsv(rows, delimiter=",")


def bids_paths(out_dir: Path, participant: str, session: str) -> tuple[Path, Path]:
    """(anat folder, label folder) of one session."""
    rel = Path(f"sub-{participant}") / f"ses-{session}" / "anat"
    return out_dir / rel, out_dir / LABELS_DIR / rel


def _write_visit(
    out_dir: Path, patient: PatientModel, visit: Visit, rendered: RenderedVisit
) -> list[dict]:
    """Write one visit's images and label; return its manifest rows (paths relative to
    ``out_dir``)."""
    _, affine, _ = patient.grid()
    look = patient.appearance
    anat, labels = bids_paths(out_dir, patient.participant_id, visit.session)
    stem = f"sub-{patient.participant_id}_ses-{visit.session}"
    label_path = labels / f"{stem}_dseg.nii.gz"
    rows = []
    for contrast, image in rendered.images.items():
        data, aff = _reorient(_to_disk_dtype(image, look.dtype), affine, look.orientation)
        save_nifti(anat / f"{stem}_{contrast}.nii.gz", data, aff)
        rows.append(
            {
                "patient": patient.participant_id,
                "visit": visit.session,
                "date": visit.acq_time.date().isoformat(),
                "modality": contrast,
                "image": str((anat / f"{stem}_{contrast}.nii.gz").relative_to(out_dir)),
                "label": str(label_path.relative_to(out_dir)),
            }
        )
    data, aff = _reorient(rendered.label, affine, look.orientation)
    save_nifti(label_path, data, aff, dtype=np.uint8)
    return rows


@dataclass
class _PatientRecord:
    participant: dict
    visit_rows: list[dict]
    truth: dict
    manifest_rows: list[dict]


def _synthesise_patient(cfg: SynthConfig, seed: int, index: int, out_dir: Path) -> _PatientRecord:
    patient = draw_patient(cfg, seed, index)
    pid = patient.participant_id
    voxel_ml = float(np.prod(cfg.voxel_mm)) / 1000.0
    baseline_pose = patient.visits[0].pose
    rows, sessions, truth_visits, manifest = [], [], [], []
    for visit in patient.visits:
        rendered = patient.render(visit)
        manifest += _write_visit(out_dir, patient, visit, rendered)
        rows.append(
            {
                "participant_id": f"sub-{pid}",
                "session_id": f"ses-{visit.session}",
                "days": visit.day,
                "acq_time": visit.acq_time.isoformat(),
                "course": "+".join(lesion.law.course for lesion in patient.lesions),
                "core_ml": f"{rendered.core_voxels * voxel_ml:.6f}",
                "edema_ml": f"{rendered.edema_voxels * voxel_ml:.6f}",
                "law_core_ml": f"{patient.core_volume_ml(visit.day):.6f}",
                "contrasts": ",".join(visit.contrasts),
            }
        )
        sessions.append(
            {"session_id": f"ses-{visit.session}", "acq_time": visit.acq_time.isoformat()}
        )
        truth_visits.append(
            {
                "session_id": f"ses-{visit.session}",
                "days": visit.day,
                "pose": visit.pose.tolist(),
                "to_baseline": (baseline_pose @ np.linalg.inv(visit.pose)).tolist(),
            }
        )
    write_text_atomic(out_dir / f"sub-{pid}" / f"sub-{pid}_sessions.tsv", _tsv(sessions))
    truth = {
        "lesions": [
            {"growth_law": lesion.law.to_dict(), "center_mm": lesion.center.tolist()}
            for lesion in patient.lesions
        ],
        "orientation": patient.appearance.orientation,
        "dtype": patient.appearance.dtype,
        "visits": truth_visits,
    }
    participant = {"participant_id": f"sub-{pid}", "age": patient.age, "sex": patient.sex}
    return _PatientRecord(participant, rows, truth, manifest)


def _worker_init() -> None:
    torch.set_num_threads(1)


def _synthesise_all(cfg: SynthConfig, seed: int, out_dir: Path, workers: int, progress: bool):
    indices = range(cfg.patients)
    bar = tqdm(
        total=cfg.patients, desc="synthesising patients", unit="patient", disable=not progress
    )
    with bar:
        if workers <= 1:
            for i in indices:
                yield _synthesise_patient(cfg, seed, i, out_dir)
                bar.update()
            return
        ctx = multiprocessing.get_context("spawn")  # torch/OpenMP are not fork-safe
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            jobs = [pool.submit(_synthesise_patient, cfg, seed, i, out_dir) for i in indices]
            for job in jobs:
                record = job.result()
                yield record
                bar.update()


def write_cohort(
    cfg: SynthConfig, seed: int, out_dir: Path | None = None, progress: bool = True
) -> CohortSummary:
    """Synthesise the cohort described by ``cfg`` into ``out_dir`` (default ``cfg.out_dir``).

    Patients are rendered by ``cfg.workers`` processes; the result does not depend on it.
    """
    out_dir = Path(out_dir or cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = min(cfg.workers, cfg.patients)
    records = list(_synthesise_all(cfg, seed, out_dir, workers, progress))
    visit_rows = [row for r in records for row in r.visit_rows]
    description = {
        "Name": "mtlgen synthetic longitudinal cohort",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
    }
    labels_desc = {
        **description,
        "Name": "mtlgen lesion labels",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "mtlgen synth"}],
    }
    truth = {
        "seed": seed,
        "voxel_mm": list(cfg.voxel_mm),
        "label_values": {"0": "background", "1": "lesion core", "2": "edema"},
        "patients": {r.participant["participant_id"]: r.truth for r in records},
    }
    write_text_atomic(out_dir / "dataset_description.json", json.dumps(description, indent=2))
    write_text_atomic(
        out_dir / LABELS_DIR / "dataset_description.json", json.dumps(labels_desc, indent=2)
    )
    write_text_atomic(out_dir / "participants.tsv", _tsv([r.participant for r in records]))
    write_text_atomic(out_dir / GROUNDTRUTH_DIR / "visits.tsv", _tsv(visit_rows))
    write_text_atomic(out_dir / GROUNDTRUTH_DIR / "groundtruth.json", json.dumps(truth, indent=1))
    manifest = [row for r in records for row in r.manifest_rows]
    write_text_atomic(out_dir / "manifest.csv", _csv(manifest))
    summary = CohortSummary(out_dir, len(records), len(visit_rows), len(manifest))
    log.info("wrote %d patients, %d visits, %d images to %s", *astuple(summary)[1:], out_dir)
    return summary
