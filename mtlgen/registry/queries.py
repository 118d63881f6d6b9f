"""Views of the registry for people: patients, a patient's timeline, rejections, and the files
the quality gate held for review (the only thing here that writes: settling a review).

Source paths are shown only on request (``show_sources``): they may hold source patient ids.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone

from sqlalchemy import func, select

from mtlgen.config import RegistryConfig
from mtlgen.registry.db import session_scope
from mtlgen.registry.models import (
    ACCEPTED,
    CURRENT,
    NEEDS_REVIEW,
    REJECTED,
    Label,
    Patient,
    Rejection,
    RejectionPatient,
    Result,
    Review,
    Scan,
    Visit,
)

_SHOWN = 3  # patients (and manifest lines) named per rejection; the rest are counted


def list_patients(reg: RegistryConfig) -> list[dict]:
    """One row per patient with at least one visit: pseudonym, baseline, number of visits and
    current scans."""
    with session_scope(reg.url, reg.sqlite_timeout_s) as s:
        per_patient = select(Visit.patient_id).group_by(Visit.patient_id)
        visits = dict(s.execute(per_patient.add_columns(func.count())).tuples().all())
        last = dict(s.execute(per_patient.add_columns(func.max(Visit.days))).tuples().all())
        current = per_patient.join(Scan, Scan.visit_id == Visit.id).where(Scan.status == CURRENT)
        scans = dict(s.execute(current.add_columns(func.count())).tuples().all())
        return [
            {
                "patient": p.pseudonym,
                "baseline": p.baseline_date or p.baseline_visit,
                "visits": visits.get(p.id, 0),
                "scans": scans.get(p.id, 0),
                "last_day": last.get(p.id, 0),
                "reference": p.reference,
            }
            for p in s.scalars(select(Patient).order_by(Patient.pseudonym))
            if visits.get(p.id)
        ]


def timeline(reg: RegistryConfig, pseudonym: str) -> list[dict]:
    """Every scan and label version of a patient, by days: status, alignment quality and the
    quality gate's review state (None if it passed)."""
    with session_scope(reg.url, reg.sqlite_timeout_s) as s:
        patient = s.scalar(select(Patient).where(Patient.pseudonym == pseudonym))
        if patient is None:
            raise KeyError(f"patient {pseudonym!r} is not in the registry")
        rows = []
        for model, kind in ((Scan, Scan.modality), (Label, None)):
            owner = f"{model.__tablename__[:-1]}_id"
            query = (
                select(Visit, model, Result, Review.state)
                .join(model, model.visit_id == Visit.id)
                .outerjoin(Result, getattr(Result, owner) == model.id)
                .outerjoin(Review, getattr(Review, owner) == model.id)
                .where(Visit.patient_id == patient.id)
            )
            for visit, row, result, review in s.execute(query):
                rows.append(
                    {
                        "visit": visit.key,
                        "date": visit.date,
                        "days": visit.days,
                        "contrast": row.modality if kind is not None else "label",
                        "version": row.version,
                        "status": row.status,
                        "aligned_on": result.reference if result else None,
                        "mi": result.mi if result else None,
                        "ncc": result.ncc if result else None,
                        "review": review,
                    }
                )
        return sorted(rows, key=lambda r: (r["days"], r["contrast"], r["version"]))


def list_rejections(reg: RegistryConfig, show_sources: bool = False) -> list[dict]:
    """Every recorded rejection, oldest first: how many patients it affects, the first of them
    and their manifest lines (the source file only with ``show_sources``)."""
    with session_scope(reg.url, reg.sqlite_timeout_s) as s:
        links: dict[int, list[RejectionPatient]] = defaultdict(list)
        for link in s.scalars(select(RejectionPatient).order_by(RejectionPatient.id)):
            links[link.rejection_id].append(link)
        rows = []
        for r in s.scalars(select(Rejection).order_by(Rejection.id)):
            names = [x.patient for x in links[r.id]] or ([r.pseudonym] if r.pseudonym else [])
            lines = [str(x.line) for x in links[r.id] if x.line is not None]
            row = {
                "patients": len(names),
                "patient": _first(names),
                "line": _first(lines) if lines else None,
                "visit": r.visit,
                "kind": r.kind,
                "reason": r.reason,
            }
            if show_sources:
                row["file"] = r.source_path
            rows.append(row)
        return rows


def _first(values: list[str]) -> str:
    """The first few of ``values`` joined, and how many more."""
    shown = ",".join(dict.fromkeys(values[:_SHOWN]))
    return shown + (f" (+{len(values) - _SHOWN})" if len(values) > _SHOWN else "")


def list_reviews(reg: RegistryConfig, state: str | None = NEEDS_REVIEW) -> list[dict]:
    """Files held by the quality gate (those in ``state``; every one if None), oldest first."""
    with session_scope(reg.url, reg.sqlite_timeout_s) as s:
        query = (
            select(Review, Patient.pseudonym, Visit, Scan, Label)
            .outerjoin(Scan, Review.scan_id == Scan.id)
            .outerjoin(Label, Review.label_id == Label.id)
            .join(Visit, Visit.id == func.coalesce(Scan.visit_id, Label.visit_id))
            .join(Patient, Patient.id == Visit.patient_id)
            .order_by(Review.id)
        )
        if state is not None:
            query = query.where(Review.state == state)
        return [
            {
                "id": review.id,
                "patient": pseudonym,
                "visit": visit.key,
                "contrast": scan.modality if scan is not None else "label",
                "version": (scan or label).version,
                "state": review.state,
                "reason": review.reason,
            }
            for review, pseudonym, visit, scan, label in s.execute(query)
        ]


def settle_review(reg: RegistryConfig, review_id: int, accept: bool) -> str:
    """Accept a held file (it joins training and prediction) or confirm its rejection; returns
    the new state. Raises ``KeyError`` for an unknown review id."""
    with session_scope(reg.url, reg.sqlite_timeout_s) as s:
        review = s.get(Review, review_id)
        if review is None:
            raise KeyError(f"no review {review_id} in the registry (see `mtlgen registry review`)")
        review.state = ACCEPTED if accept else REJECTED
        review.settled_at = datetime.now(timezone.utc)
        return review.state


def format_table(rows: list[dict], path_width: int = 60) -> str:
    """A plain-text table; cells of a ``file`` column longer than ``path_width`` keep their end."""
    if not rows:
        return "(none)"

    def text(column: str, value) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if value % 1 else f"{value:.0f}"
        value = "-" if value is None else str(value)
        if column == "file" and len(value) > path_width:
            return "..." + value[-(path_width - 3) :]
        return value

    columns = list(rows[0])
    cells = [[text(c, r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)
