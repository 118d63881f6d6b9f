"""Alignment accuracy against a synthetic cohort's ground-truth poses.

For each registered follow-up, the residual is how far a brain point of the baseline ends up
from where it truly came from in the follow-up scan: ``|T_est^-1 p - T_true^-1 p|`` over the
baseline's brain voxels on the model grid, in model-grid voxels; the rotation error is the angle
of ``R_est^T R_true``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.spatial.transform import Rotation
from sqlalchemy import select

from mtlgen.config import Params
from mtlgen.preprocess.grid import Grid
from mtlgen.registry.db import session_scope
from mtlgen.registry.models import CURRENT, Patient, Result, Scan, Visit
from mtlgen.registry.pseudonym import load_key, pseudonymise

_BRAIN_LEVEL = 0.3  # normalised intensity above which a baseline grid voxel counts as brain


@dataclass(frozen=True)
class AlignmentError:
    patient: str  # pseudonym
    visit: str
    mean_voxels: float
    max_voxels: float
    rotation_deg: float


def residual(
    estimated: np.ndarray, truth: np.ndarray, points_mm: np.ndarray, voxel_mm: float
) -> tuple[float, float, float]:
    """(mean, max) residual in voxels of ``voxel_mm`` over ``points_mm`` [3, N], and the
    rotation error in degrees, of two follow-up -> baseline transforms."""
    diff = np.linalg.inv(estimated) - np.linalg.inv(truth)
    err = np.linalg.norm(diff[:3, :3] @ points_mm + diff[:3, 3:4], axis=0) / voxel_mm
    angle = Rotation.from_matrix(estimated[:3, :3].T @ truth[:3, :3]).magnitude()
    return float(err.mean()), float(err.max()), float(np.degrees(angle))


def alignment_errors(params: Params, cohort: Path) -> list[AlignmentError]:
    """Errors of every registered follow-up of a synthetic cohort (``groundtruth.json``)."""
    truth = json.loads((Path(cohort) / "derivatives/groundtruth/groundtruth.json").read_text())
    key = load_key(params.registry.key_file)
    spacing = params.preprocess.spacing_mm
    errors = []
    reg = params.registry
    with session_scope(reg.url, reg.sqlite_timeout_s) as session:
        for participant, record in truth["patients"].items():
            pseudonym = pseudonymise(participant.removeprefix("sub-"), key)
            patient = session.scalar(select(Patient).where(Patient.pseudonym == pseudonym))
            if patient is None:
                continue
            grid = Grid.from_json(patient.grid)
            rows = session.execute(
                select(Visit.key, Scan.modality, Result.processed_path, Result.to_baseline)
                .join(Scan, Scan.visit_id == Visit.id)
                .join(Result, Result.scan_id == Scan.id)
                .where(Visit.patient_id == patient.id, Scan.status == CURRENT)
            ).all()
            base = next(
                r.processed_path
                for r in rows
                if r.key == patient.baseline_visit and r.modality == patient.reference
            )
            brain = np.argwhere(nib.load(base).get_fdata() > _BRAIN_LEVEL).T
            points = grid.affine[:3, :3] @ brain + grid.affine[:3, 3:4]
            transforms = {r.key: np.asarray(json.loads(r.to_baseline)) for r in rows}
            for visit in record["visits"]:
                key_ = visit["session_id"].removeprefix("ses-")
                if key_ == patient.baseline_visit or key_ not in transforms:
                    continue
                mean, worst, angle = residual(
                    transforms[key_], np.asarray(visit["to_baseline"]), points, spacing
                )
                errors.append(AlignmentError(pseudonym, key_, mean, worst, angle))
    return errors
