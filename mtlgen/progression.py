"""Progression status from lesion volumes: one rule for labels, baselines and models; and the
year that every rate and horizon in mtlgen is measured in."""

from __future__ import annotations

from typing import Literal

Status = Literal["progressive", "stable", "responding"]
STATUSES: tuple[Status, ...] = ("progressive", "stable", "responding")
DAYS_PER_YEAR = 365.25  # days in a (Julian) year: rates are per year, visit dates in days


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
