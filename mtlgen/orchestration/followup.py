"""When a patient's next visit is due, and which patients need a follow-up prediction now.

The expected interval is the median of the patient's observed intervals between visits (a
single-visit patient gets ``default_interval_days``); the next visit is due that long after the
last one. A patient is *due* when that date lies within ``window_days`` of ``as_of``, either side
(a visit a little overdue still gets its prediction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import pairwise
from statistics import median

from mtlgen.config import Params


@dataclass(frozen=True)
class FollowUp:
    """A follow-up to predict: ``target_days`` is the due date in days since the baseline."""

    patient: str
    last_visit: date
    due: date
    target_days: float


def next_visit_due(visit_dates: Sequence[date], default_interval_days: float) -> date:
    """Last visit + median observed interval (``default_interval_days`` with one visit)."""
    if not visit_dates:
        raise ValueError("next_visit_due needs at least one visit date")
    if default_interval_days <= 0:
        raise ValueError(f"default_interval_days must be > 0, got {default_interval_days}")
    dates = sorted(visit_dates)
    gaps = [(b - a).days for a, b in pairwise(dates) if b > a]
    interval = median(gaps) if gaps else default_interval_days
    return dates[-1] + timedelta(days=round(interval))


def due_follow_ups(
    patients: Mapping[str, Sequence[date]],
    as_of: date,
    window_days: float,
    default_interval_days: float,
) -> list[FollowUp]:
    """Patients (pseudonym -> visit dates) whose next visit is due within ``window_days`` of
    ``as_of``, sorted by due date then patient."""
    if window_days < 0:
        raise ValueError(f"window_days must be >= 0, got {window_days}")
    due = []
    for patient, dates in patients.items():
        when = next_visit_due(dates, default_interval_days)
        if abs((when - as_of).days) <= window_days:
            due.append(FollowUp(patient, max(dates), when, float((when - min(dates)).days)))
    return sorted(due, key=lambda f: (f.due, f.patient))


def follow_up_at(patient: str, visit_dates: Sequence[date], target: date) -> FollowUp:
    """A follow-up for ``patient`` at an explicit ``target`` date (after its last visit)."""
    if not visit_dates:
        raise ValueError(f"patient {patient}: no visits")
    last = max(visit_dates)
    if target <= last:
        raise ValueError(f"patient {patient}: target {target} is not after the last visit {last}")
    return FollowUp(patient, last, target, float((target - min(visit_dates)).days))


def visit_dates(url: str, sqlite_timeout_s: float = 120.0) -> dict[str, list[date]]:
    """Registry patients (pseudonym) -> their visits' calendar dates (baseline date + days);
    patients registered by days only (no calendar dates) are left out."""
    from sqlalchemy import select

    from mtlgen.registry.db import session_scope
    from mtlgen.registry.models import Patient, Visit

    with session_scope(url, sqlite_timeout_s) as session:
        rows = session.execute(
            select(Patient.pseudonym, Patient.baseline_date, Visit.days).join(Visit)
        ).all()
    dates: dict[str, list[date]] = {}
    for pseudonym, baseline, days in rows:
        if baseline is not None:
            dates.setdefault(pseudonym, []).append(baseline + timedelta(days=round(days)))
    return {p: sorted(d) for p, d in dates.items()}


def prediction_data_version(params: Params) -> dict[str, str] | None:
    """DVC's hashes (dvc.lock) of the processed folder and the SQLite registry file that
    predictions read; None when DVC tracks neither."""
    from mtlgen.track.provenance import dvc_hashes

    paths = [str(params.preprocess.out_dir)]
    if params.registry.url.startswith("sqlite:///"):
        paths.append(params.registry.url.removeprefix("sqlite:///"))
    known = {path: digest for path, digest in dvc_hashes(paths).items() if digest != "untracked"}
    return known or None
