"""When a prediction is for: ``--at YYYY-MM-DD`` or ``--at +DAYS``, checked against a patient's
visits, and the folder its files go to (the target date, or ``day-<N>`` without dates)."""

from __future__ import annotations

import re
from datetime import date, timedelta

from mtlgen.io.series import PatientSeries, VisitVolumes

_DAYS = re.compile(r"^\+(\d+(?:\.\d+)?)$")


class BadTarget(ValueError):
    """A target that cannot be predicted (malformed, before the first visit, on a visit)."""


def parse_at(at: str, patient: PatientSeries) -> float:
    """``at`` (``YYYY-MM-DD``, or ``+DAYS`` after the last visit) as days since the patient's
    baseline; the date must lie after the first visit and on no visit."""
    last = patient.visits[-1]
    plus = _DAYS.match(at.strip())
    if plus:
        target = last.days + float(plus.group(1))
    else:
        try:
            when = date.fromisoformat(at.strip())
        except ValueError:
            raise BadTarget(f"--at {at!r}: expected YYYY-MM-DD or +DAYS (e.g. +180)") from None
        base = baseline_date(patient)
        if base is None:
            raise BadTarget(
                f"--at {at}: patient {patient.patient} has no visit dates in the registry; "
                "give days after the last visit instead (e.g. --at +180)"
            )
        target = float((when - base).days)
    check_target(patient, target)
    return target


def baseline_date(patient: PatientSeries) -> date | None:
    """The calendar date of day 0 (from any dated visit), None when no visit has a date."""
    for visit in patient.visits:
        if visit.date is not None:
            return visit.date - timedelta(days=round(visit.days))
    return None


def check_target(patient: PatientSeries, target_days: float) -> None:
    """Refuse a target on or before the first visit, or on a visit that exists."""
    first = patient.visits[0]
    if target_days <= first.days:
        raise BadTarget(
            f"patient {patient.patient}: the target (day {target_days:g}) is not after the "
            f"first visit (day {first.days:g}); predictions need at least one visit before"
        )
    same = [v for v in patient.visits if v.days == target_days]
    if same:
        raise BadTarget(
            f"patient {patient.patient}: visit {same[0].visit} exists at day {target_days:g}; "
            "pick a date without a visit"
        )


def target_date(patient: PatientSeries, target_days: float) -> date | None:
    """The calendar date of ``target_days`` (None when the registry has no dates)."""
    base = baseline_date(patient)
    return None if base is None else base + timedelta(days=round(target_days))


def folder_name(patient: PatientSeries, target_days: float) -> str:
    """``YYYY-MM-DD`` of the target, or ``day-<N>`` (days since baseline) without dates."""
    when = target_date(patient, target_days)
    return when.isoformat() if when is not None else f"day-{round(target_days)}"


def context_around(patient: PatientSeries, target_days: float) -> list[VisitVolumes]:
    """The context of a target: every visit before it, and for a reconstruction (a date
    between two visits) the next visit after it too, so the gap is filled from both sides."""
    before = [v for v in patient.visits if v.days < target_days]
    after = [v for v in patient.visits if v.days > target_days]
    return before + after[:1]
