"""Read-only views of the registry for people: patients, a patient's timeline, rejections."""

from __future__ import annotations

from sqlalchemy import func, select

from mtlgen.config import RegistryConfig
from mtlgen.registry.db import session_scope
from mtlgen.registry.models import CURRENT, Label, Patient, Rejection, Result, Scan, Visit


def list_patients(reg: RegistryConfig) -> list[dict]:
    """One row per patient: pseudonym, baseline, number of visits and current scans."""
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
        ]


def timeline(reg: RegistryConfig, pseudonym: str) -> list[dict]:
    """Every scan and label version of a patient, by days: status and alignment quality."""
    with session_scope(reg.url, reg.sqlite_timeout_s) as s:
        patient = s.scalar(select(Patient).where(Patient.pseudonym == pseudonym))
        if patient is None:
            raise KeyError(f"patient {pseudonym!r} is not in the registry")
        rows = []
        for model, kind in ((Scan, Scan.modality), (Label, None)):
            query = (
                select(Visit, model, Result)
                .join(model, model.visit_id == Visit.id)
                .outerjoin(Result, getattr(Result, f"{model.__tablename__[:-1]}_id") == model.id)
                .where(Visit.patient_id == patient.id)
            )
            for visit, row, result in s.execute(query):
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
                    }
                )
        return sorted(rows, key=lambda r: (r["days"], r["contrast"], r["version"]))


def list_rejections(reg: RegistryConfig) -> list[dict]:
    """Every recorded rejection, oldest first."""
    with session_scope(reg.url, reg.sqlite_timeout_s) as s:
        return [
            {
                "patient": r.pseudonym,
                "visit": r.visit,
                "kind": r.kind,
                "file": r.source_path,
                "reason": r.reason,
            }
            for r in s.scalars(select(Rejection).order_by(Rejection.id))
        ]


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
