"""Quantified progression: lesion volumes from a label map, the progression status from two
volumes (one rule for labels, baselines and models), and the year that every rate and horizon in
mtlgen is measured in."""

from __future__ import annotations

from typing import Literal

import numpy as np

Status = Literal["progressive", "stable", "responding"]
STATUSES: tuple[Status, ...] = ("progressive", "stable", "responding")
DAYS_PER_YEAR = 365.25  # days in a (Julian) year: rates are per year, visit dates in days


def voxel_spacing_mm(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths (mm) from a voxel-to-world affine."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL (|det| of the affine's 3x3 part, mm^3 / 1000)."""
    det = abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])))
    if not det > 0:
        raise ValueError(f"degenerate affine (determinant {det}): voxel volume undefined")
    return det / 1000.0


def label_volume_ml(label: np.ndarray, affine: np.ndarray, value: int = 1) -> float:
    """Volume in mL of the voxels equal to ``value`` (default 1, lesion core)."""
    return int(np.count_nonzero(np.asarray(label) == value)) * voxel_volume_ml(affine)


def lesion_volumes_ml(label: np.ndarray, voxel_ml: float) -> tuple[float, float]:
    """(core, whole lesion = core + edema) volume in mL of a label map (0 background, 1 core,
    2 edema) with voxels of ``voxel_ml`` mL."""
    core = float((label == 1).sum()) * voxel_ml
    return core, float((label > 0).sum()) * voxel_ml


def progression_status(
    reference_ml: float, target_ml: float, increase: float, decrease: float
) -> Status:
    """Status at the target time relative to the reference (last observed) volume.

    ``progressive`` if the volume grew by at least ``increase`` (fraction, e.g. 0.25),
    ``responding`` if it shrank by at least ``decrease``, else ``stable``.
    """
    if reference_ml < 0 or target_ml < 0:
        raise ValueError(f"volumes must be >= 0, got {reference_ml} and {target_ml}")
    if reference_ml == 0:
        return "progressive" if target_ml > 0 else "stable"
    change = target_ml / reference_ml - 1.0
    if change >= increase:
        return "progressive"
    if change <= -decrease:
        return "responding"
    return "stable"
