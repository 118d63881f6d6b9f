"""Record what registering one patient found: the patient, new scan/label versions with their
processing results, and rejections.

The registration stage (``mtlgen.register``) does the heavy work outside any transaction and
hands its results here; each function is one short transaction, made race-free by the unique
constraints (and ``BEGIN IMMEDIATE`` on SQLite). A write that loses a race to a concurrent
registration raises ``sqlalchemy.exc.IntegrityError`` and leaves the registry unchanged: the
caller reads the registry again and starts over.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
from sqlalchemy import func, select
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
    Result,
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


@dataclass(frozen=True)
class RejectionRecord:
    """A rejected file (recorded once per source path, content and reason)."""

    visit: str | None
    kind: str
    source_path: str
    sha256: str
    reason: str


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


def insert_patient(
    reg: RegistryConfig,
    pseudonym: str,
    source_id: str,
    *,
    baseline_visit: str,
    baseline_date: date | None,
    reference: str,
    grid: str,
) -> Patient | None:
    """Insert a patient (and its source id) and return it as ``load_patient`` does. Raises
    ``IntegrityError`` if another process inserted the patient first."""
    patient = Patient(
        pseudonym=pseudonym,
        baseline_visit=baseline_visit,
        baseline_date=baseline_date,
        reference=reference,
        grid=grid,
    )
    with session_scope(reg.url, reg.sqlite_timeout_s) as session:
        session.add(patient)
        session.flush()
        session.add(PatientId(pseudonym=pseudonym, source_id=source_id))
    return load_patient(reg, pseudonym)


def record_patient(
    reg: RegistryConfig,
    pseudonym: str | None,
    patient_id: int | None,
    scans: Sequence[ScanRecord],
    rejections: Sequence[RejectionRecord],
) -> Recorded:
    """One transaction: new visits, scan/label versions, results and rejections.

    ``patient_id`` (the registry's id of the patient) may be None only without ``scans``.
    Raises ``IntegrityError`` if a concurrent registration wrote the same rows first.
    """
    registered = unchanged = 0
    with session_scope(reg.url, reg.sqlite_timeout_s) as session:
        for rec in scans:
            if _add_version(session, patient_id, rec):
                registered += 1
            else:
                unchanged += 1  # a concurrent registration recorded it first
        for rej in rejections:
            _add_rejection(session, pseudonym, rej)
    return Recorded(registered, unchanged)


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


def _add_rejection(session: Session, pseudonym: str | None, rej: RejectionRecord) -> None:
    exists = session.scalar(
        select(Rejection.id).where(
            Rejection.source_path == rej.source_path,
            Rejection.sha256 == rej.sha256,
            Rejection.reason == rej.reason,
        )
    )
    if exists is None:
        session.add(
            Rejection(
                pseudonym=pseudonym,
                visit=rej.visit,
                kind=rej.kind,
                source_path=rej.source_path,
                sha256=rej.sha256,
                reason=rej.reason,
            )
        )
        session.flush()


def _get_visit(session: Session, patient_id: int, rec: ScanRecord) -> Visit:
    row = session.scalar(
        select(Visit).where(Visit.patient_id == patient_id, Visit.key == rec.visit_key)
    )
    if row is None:
        row = Visit(patient_id=patient_id, key=rec.visit_key, date=rec.visit_date, days=rec.days)
        session.add(row)
        session.flush()
    return row
