"""A patient's registry rows, read in one pass for the whole cohort: visits, current scans and
labels with their processing results, and rejected files. Pseudonyms only: source paths are
never read, and source ids only by ``source_ids``, to check that no page shows one."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

from sqlalchemy import literal, select

from mtlgen.config import RegistryConfig
from mtlgen.io.series import PatientSeries, VisitVolumes
from mtlgen.registry.db import session_scope
from mtlgen.registry.models import (
    ACCEPTED,
    CURRENT,
    Label,
    Patient,
    PatientId,
    Rejection,
    RejectionPatient,
    Result,
    Review,
    Scan,
    Visit,
)

_PATH = re.compile(r"\S*[/\\]\S*")


@dataclass(frozen=True)
class ScanRow:
    """A current scan (or label, ``contrast`` = ``label``) of a visit and its processing."""

    contrast: str
    version: int
    sha256: str
    processed: str | None  # processed file on the model grid, None if not processed
    mi: float | None
    ncc: float | None
    review: (
        str | None
    )  # the quality gate's state (needs_review, accepted, rejected), None if passed
    review_reason: str | None

    @property
    def usable(self) -> bool:
        """Processed and not held back by the quality gate (what training and prediction read)."""
        return self.processed is not None and self.review in (None, ACCEPTED)


@dataclass(frozen=True)
class VisitRow:
    key: str
    date: date | None
    days: float
    scans: tuple[ScanRow, ...]  # current scans by contrast
    label: ScanRow | None  # current label


@dataclass(frozen=True)
class PatientRows:
    """Everything the registry holds on one patient that a report shows."""

    pseudonym: str
    baseline_date: date | None
    reference: str
    visits: tuple[VisitRow, ...]
    rejections: tuple[str, ...]  # "visit kind: reason", file paths redacted

    def fingerprint(self) -> str:
        """sha256 of the rows: changes whenever a visit, scan, label, processing result or
        rejection of the patient does."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def series(self) -> PatientSeries:
        """The processed visits as the models read them (visits with a usable scan; scans the
        quality gate holds back are left out, as ``mtlgen.registry.series.load_series`` does)."""
        visits = []
        for visit in self.visits:
            images = {s.contrast: Path(s.processed) for s in visit.scans if s.usable}
            if images:
                label = visit.label.processed if visit.label and visit.label.usable else None
                visits.append(
                    VisitVolumes(visit.key, visit.days, images, Path(label) if label else None)
                )
        return PatientSeries(self.pseudonym, tuple(visits))


def redact_paths(text: str) -> str:
    """``text`` with every path-like word replaced by ``[file]`` (a path may hold a source id)."""
    return _PATH.sub("[file]", text)


def _files(s, model, patient_ids: list[int] | None) -> dict[int, list[ScanRow]]:
    """Current scans (or labels) with their processing result, by visit id (Core rows: a
    thousand patients' files load in a fraction of the time ORM objects take)."""
    contrast = model.modality if model is Scan else literal("label")
    key = Result.scan_id if model is Scan else Result.label_id
    review_key = Review.scan_id if model is Scan else Review.label_id
    query = (
        select(
            model.visit_id,
            contrast,
            model.version,
            model.sha256,
            Result.processed_path,
            Result.mi,
            Result.ncc,
            Review.state,
            Review.reason,
        )
        .outerjoin(Result, key == model.id)
        .outerjoin(Review, review_key == model.id)
        .where(model.status == CURRENT)
    )
    if patient_ids is not None:
        query = query.join(Visit, Visit.id == model.visit_id).where(
            Visit.patient_id.in_(patient_ids)
        )
    files: dict[int, list[ScanRow]] = {}
    for visit_id, *row in s.execute(query):
        files.setdefault(visit_id, []).append(ScanRow(*row))
    return files


def read_patients(reg: RegistryConfig, patients: list[str] | None = None) -> list[PatientRows]:
    """Registry rows of ``patients`` (pseudonyms; every patient when None), by pseudonym."""
    with session_scope(reg.url, reg.sqlite_timeout_s) as s:
        query = select(Patient.id, Patient.pseudonym, Patient.baseline_date, Patient.reference)
        if patients is not None:
            query = query.where(Patient.pseudonym.in_(patients))
        found = s.execute(query.order_by(Patient.pseudonym)).all()
        ids = None if patients is None else [p.id for p in found]
        visit_query = select(Visit.id, Visit.patient_id, Visit.key, Visit.date, Visit.days)
        if ids is not None:
            visit_query = visit_query.where(Visit.patient_id.in_(ids))
        visits: dict[int, list] = {}
        for row in s.execute(visit_query.order_by(Visit.days, Visit.key)):
            visits.setdefault(row.patient_id, []).append(row)
        scans, labels = _files(s, Scan, ids), _files(s, Label, ids)
        names = [p.pseudonym for p in found]
        rejected: dict[str, list[str]] = {}
        rejections = select(
            RejectionPatient.patient, RejectionPatient.visit, Rejection.kind, Rejection.reason
        ).join(Rejection, Rejection.id == RejectionPatient.rejection_id)
        if patients is not None:
            rejections = rejections.where(RejectionPatient.patient.in_(names))
        for name, visit, kind, reason in s.execute(rejections.order_by(RejectionPatient.id)):
            where = f"visit {visit}" if visit else "patient"
            rejected.setdefault(name, []).append(f"{where} {kind}: {redact_paths(reason)}")
    out = []
    for p in found:
        rows = tuple(
            VisitRow(
                v.key,
                v.date,
                float(v.days),
                tuple(sorted(scans.get(v.id, []), key=lambda r: r.contrast)),
                (labels.get(v.id) or [None])[0],
            )
            for v in visits.get(p.id, [])
        )
        out.append(
            PatientRows(
                p.pseudonym,
                p.baseline_date,
                p.reference,
                rows,
                tuple(rejected.get(p.pseudonym, ())),
            )
        )
    if patients is not None:
        missing = sorted(set(patients) - set(names))
        if missing:
            raise KeyError(f"patients {missing} are not in the registry")
    return out


def source_ids(reg: RegistryConfig) -> set[str]:
    """Every source patient id in the registry: what no page may show."""
    with session_scope(reg.url, reg.sqlite_timeout_s) as s:
        return set(s.scalars(select(PatientId.source_id)))


def find_source_id(text: str, ids: set[str]) -> str | None:
    """The first of ``ids`` that ``text`` holds as a word of its own (not inside a longer word
    or number), or None."""
    for sid in ids:
        if re.search(rf"(?<![\w.]){re.escape(sid)}(?![\w])", text):
            return sid
    return None
