"""Record what registering one patient found: the patient, new scan/label versions with their
processing results, and rejections.

The registration stage (``mtlgen.register``) does the heavy work outside any transaction and
hands its results here in one short transaction, made race-free by the unique constraints (and
``BEGIN IMMEDIATE`` on SQLite). Rows any process may write alike (visits, rejections and the
patients they affect) are inserted with ``ON CONFLICT DO NOTHING`` on both SQLite and PostgreSQL;
a new patient and new versions that lose a race raise ``sqlalchemy.exc.IntegrityError`` and leave
the registry unchanged: the caller reads the registry again and starts over.

A new patient is inserted in the same transaction as its first files, so the registry never
holds a patient without visits (even when a registration is killed half-way).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
from sqlalchemy import delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from mtlgen.config import RegistryConfig
from mtlgen.io.source_types import LABEL
from mtlgen.registry.db import session_scope
from mtlgen.registry.models import (
    CURRENT,
    SUPERSEDED,
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


@dataclass(frozen=True)
class ScanRecord:
    """A new, processed file of a visit: recorded as the next version of its contrast (or of
    the visit's label when ``modality`` is ``LABEL``) with its processing result."""

    visit_key: str
    visit_date: date | None
    days: float  # since baseline; used when the visit is new
    modality: str
    source_path: str
    sha256: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    orientation: str
    processed_path: str
    to_baseline: np.ndarray  # 4x4, source world -> baseline world
    reference: str
    mi: float | None
    ncc: float | None
    review: str | None = None  # why the quality gate held it back (recorded as needs_review)


@dataclass(frozen=True)
class RejectionRecord:
    """A rejected file (recorded once per source path, content and reason) and the patient
    (pseudonym or redacted invalid id) and manifest line that referenced it."""

    visit: str | None
    kind: str
    source_path: str
    sha256: str
    reason: str
    patient: str = ""
    line: int | None = None


@dataclass(frozen=True)
class NewPatient:
    """A patient to insert with its first files: baseline, reference contrast, grid (JSON)."""

    pseudonym: str
    source_id: str
    baseline_visit: str
    baseline_date: date | None
    reference: str
    grid: str

    def transient(self) -> Patient:
        """An unsaved ``Patient`` (no visits) to process the first files against."""
        return Patient(
            pseudonym=self.pseudonym,
            baseline_visit=self.baseline_visit,
            baseline_date=self.baseline_date,
            reference=self.reference,
            grid=self.grid,
            visits=[],
        )


@dataclass(frozen=True)
class Recorded:
    """What ``record_patient`` wrote: new versions, and files a concurrent registration had
    already recorded (counted as unchanged)."""

    registered: int
    unchanged: int


def load_patient(reg: RegistryConfig, pseudonym: str) -> Patient | None:
    """The patient with its visits, scans, labels and results loaded (detached), or None."""
    with session_scope(reg.url, reg.sqlite_timeout_s) as session:
        return session.scalars(
            select(Patient)
            .where(Patient.pseudonym == pseudonym)
            .options(
                selectinload(Patient.visits).selectinload(Visit.scans).selectinload(Scan.result),
                selectinload(Patient.visits).selectinload(Visit.labels).selectinload(Label.result),
            )
        ).one_or_none()


def record_patient(
    reg: RegistryConfig,
    patient_id: int | None,
    scans: Sequence[ScanRecord],
    rejections: Sequence[RejectionRecord],
    new: NewPatient | None = None,
) -> Recorded:
    """One transaction: the new patient (``new``, only with ``scans``), new visits, scan/label
    versions, results, reviews and rejections.

    ``patient_id`` (the registry's id of the patient) is None for a new patient or without
    ``scans``. Raises ``IntegrityError`` if a concurrent registration wrote the same patient or
    versions first.
    """
    registered = unchanged = 0
    with session_scope(reg.url, reg.sqlite_timeout_s) as session:
        if new is not None and scans:
            patient_id = _insert_patient(session, new)
        for rec in scans:
            if _add_version(session, patient_id, rec):
                registered += 1
            else:
                unchanged += 1  # a concurrent registration recorded it first
        for rej in rejections:
            _add_rejection(session, rej)
    return Recorded(registered, unchanged)


def _insert_patient(session: Session, new: NewPatient) -> int:
    patient = new.transient()
    session.add(patient)
    session.flush()  # IntegrityError if another process inserted the patient first
    session.add(PatientId(pseudonym=new.pseudonym, source_id=new.source_id))
    return patient.id


def insert_ignore(session: Session, model: type, **values) -> None:
    """INSERT that does nothing when the row would violate a unique constraint (SQLite and
    PostgreSQL: ``ON CONFLICT DO NOTHING``; other databases: a savepoint)."""
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        module = sqlite if dialect == "sqlite" else postgresql
        session.execute(module.insert(model).values(**values).on_conflict_do_nothing())
        return
    try:
        with session.begin_nested():
            session.execute(insert(model).values(**values))
    except IntegrityError:
        pass


def _add_version(session: Session, patient_id: int, rec: ScanRecord) -> bool:
    """Record ``rec`` as the current version, superseding the old one; False if its content is
    already recorded."""
    visit = _get_visit(session, patient_id, rec)
    model = Label if rec.modality == LABEL else Scan
    scope = [model.visit_id == visit.id]
    if model is Scan:
        scope.append(Scan.modality == rec.modality)
    if session.scalar(select(model.id).where(*scope, model.sha256 == rec.sha256)) is not None:
        return False
    version = (session.scalar(select(func.max(model.version)).where(*scope)) or 0) + 1
    for old in session.scalars(select(model).where(*scope, model.status == CURRENT)):
        old.status = SUPERSEDED
    row = model(
        visit_id=visit.id,
        version=version,
        source_path=rec.source_path,
        sha256=rec.sha256,
        shape=json.dumps(list(rec.shape)),
        spacing=json.dumps([round(s, 6) for s in rec.spacing]),
        orientation=rec.orientation,
        status=CURRENT,
    )
    if model is Scan:
        row.modality = rec.modality
    session.add(row)
    session.flush()
    if rec.review is not None:
        session.add(
            Review(
                scan_id=row.id if model is Scan else None,
                label_id=row.id if model is Label else None,
                reason=rec.review,
            )
        )
    session.add(
        Result(
            scan_id=row.id if model is Scan else None,
            label_id=row.id if model is Label else None,
            processed_path=rec.processed_path,
            to_baseline=json.dumps(np.asarray(rec.to_baseline).tolist()),
            reference=rec.reference,
            mi=rec.mi,
            ncc=rec.ncc,
        )
    )
    return True


def _add_rejection(session: Session, rej: RejectionRecord) -> None:
    """The rejection (once per path, content and reason) and the patient it affects."""
    key = (
        Rejection.source_path == rej.source_path,
        Rejection.sha256 == rej.sha256,
        Rejection.reason == rej.reason,
    )
    insert_ignore(
        session,
        Rejection,
        pseudonym=rej.patient or None,
        visit=rej.visit,
        kind=rej.kind,
        source_path=rej.source_path,
        sha256=rej.sha256,
        reason=rej.reason,
    )
    if rej.patient:
        insert_ignore(
            session,
            RejectionPatient,
            rejection_id=session.scalar(select(Rejection.id).where(*key)),
            patient=rej.patient,
            visit=rej.visit or "",
            line=rej.line,
        )


def _get_visit(session: Session, patient_id: int, rec: ScanRecord) -> Visit:
    where = (Visit.patient_id == patient_id, Visit.key == rec.visit_key)
    row = session.scalar(select(Visit).where(*where))
    if row is None:
        insert_ignore(
            session,
            Visit,
            patient_id=patient_id,
            key=rec.visit_key,
            date=rec.visit_date,
            days=rec.days,
        )
        row = session.scalar(select(Visit).where(*where))
    return row


def drop_patients_without_visits(reg: RegistryConfig) -> int:
    """Delete patients (and their source ids) that have no visit: left by a registration killed
    between inserting a patient and its files. Returns how many."""
    with session_scope(reg.url, reg.sqlite_timeout_s) as session:
        empty = select(Patient.pseudonym).where(
            ~select(Visit.id).where(Visit.patient_id == Patient.id).exists()
        )
        names = list(session.scalars(empty))
        if names:
            session.execute(delete(PatientId).where(PatientId.pseudonym.in_(names)))
            session.execute(delete(Patient).where(Patient.pseudonym.in_(names)))
        return len(names)


def patient_pseudonyms(reg: RegistryConfig) -> set[str]:
    """Every patient's pseudonym, with visits or without."""
    with session_scope(reg.url, reg.sqlite_timeout_s) as session:
        return set(session.scalars(select(Patient.pseudonym)))


def processed_paths(reg: RegistryConfig) -> set[str]:
    """Every processed file a result row refers to."""
    with session_scope(reg.url, reg.sqlite_timeout_s) as session:
        return set(session.scalars(select(Result.processed_path)))
