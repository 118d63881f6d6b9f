"""Registry tables (SQLAlchemy 2 ORM): patients, their source ids, visits, scans, labels,
processing results, reviews (files the quality gate held back) and rejections with every patient
they affect.

Tables are only ever added (never altered), so ``create_all`` brings an older registry up to date.

Only ``patient_ids`` holds a source patient id; every other table uses the pseudonym. A scan
(or label) is one *version* of a visit's contrast: a changed file is a new row with the next
version, and the old row is kept with status ``superseded``. Rows are stamped by
``mtlgen.clock.stamp_now`` (``SOURCE_DATE_EPOCH`` pins it, so two registrations of the same
input dump identically).
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from mtlgen.clock import stamp_now

CURRENT, SUPERSEDED = "current", "superseded"
NEEDS_REVIEW, ACCEPTED, REJECTED = "needs_review", "accepted", "rejected"


class Base(DeclarativeBase):
    pass


class Patient(Base):
    """One patient under its pseudonym: its baseline visit, the contrast every follow-up is aligned
    on (``reference``) and the model grid (JSON) around the baseline brain."""

    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(64), unique=True)
    baseline_visit: Mapped[str] = mapped_column(String(64))
    baseline_date: Mapped[date | None] = mapped_column(Date)
    reference: Mapped[str] = mapped_column(String(64))
    grid: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=stamp_now)
    visits: Mapped[list[Visit]] = relationship(back_populates="patient")


class PatientId(Base):
    """The only place a source patient id is stored: pseudonym -> source id."""

    __tablename__ = "patient_ids"
    pseudonym: Mapped[str] = mapped_column(
        ForeignKey("patients.pseudonym", ondelete="CASCADE"), primary_key=True
    )
    source_id: Mapped[str] = mapped_column(String(256))


class Visit(Base):
    __tablename__ = "visits"
    __table_args__ = (UniqueConstraint("patient_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    date: Mapped[date | None] = mapped_column(Date)
    days: Mapped[float] = mapped_column(Float)
    patient: Mapped[Patient] = relationship(back_populates="visits")
    scans: Mapped[list[Scan]] = relationship(back_populates="visit")
    labels: Mapped[list[Label]] = relationship(back_populates="visit")


class _SourceFile:
    """Columns shared by scans and labels: where it came from and its geometry."""

    version: Mapped[int] = mapped_column(Integer)
    source_path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    shape: Mapped[str] = mapped_column(String(64))
    spacing: Mapped[str] = mapped_column(String(128))
    orientation: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default=CURRENT)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=stamp_now)


class Scan(_SourceFile, Base):
    __tablename__ = "scans"
    __table_args__ = (
        UniqueConstraint("visit_id", "modality", "version"),
        UniqueConstraint("visit_id", "modality", "sha256"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    visit_id: Mapped[int] = mapped_column(ForeignKey("visits.id", ondelete="CASCADE"))
    modality: Mapped[str] = mapped_column(String(64))
    visit: Mapped[Visit] = relationship(back_populates="scans")
    result: Mapped[Result | None] = relationship(back_populates="scan")
    review: Mapped[Review | None] = relationship(viewonly=True)


class Label(_SourceFile, Base):
    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("visit_id", "version"),
        UniqueConstraint("visit_id", "sha256"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    visit_id: Mapped[int] = mapped_column(ForeignKey("visits.id", ondelete="CASCADE"))
    visit: Mapped[Visit] = relationship(back_populates="labels")
    result: Mapped[Result | None] = relationship(back_populates="label")
    review: Mapped[Review | None] = relationship(viewonly=True)


class Result(Base):
    """Processing result of one scan or label: the file on the model grid and the alignment.

    ``to_baseline`` (JSON 4x4) maps the source scan's world (RAS mm) onto the baseline's world;
    with the patient's grid it maps model-grid outputs back to the original scan space.
    ``mi`` is the final Mattes mutual information, ``ncc`` the correlation with the baseline's
    reference on the grid (both None for the baseline itself).
    """

    __tablename__ = "results"
    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int | None] = mapped_column(ForeignKey("scans.id"), unique=True)
    label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id"), unique=True)
    processed_path: Mapped[str] = mapped_column(Text)
    to_baseline: Mapped[str] = mapped_column(Text)
    reference: Mapped[str] = mapped_column(String(64))
    mi: Mapped[float | None] = mapped_column(Float)
    ncc: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=stamp_now)
    scan: Mapped[Scan | None] = relationship(back_populates="result")
    label: Mapped[Label | None] = relationship(back_populates="result")


class Rejection(Base):
    """A file that failed a check, with its one-line reason (recorded once per content; the
    patients it affects are in ``rejection_patients``, ``pseudonym`` is the first of them)."""

    __tablename__ = "rejections"
    __table_args__ = (UniqueConstraint("source_path", "sha256", "reason"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    pseudonym: Mapped[str | None] = mapped_column(String(64))
    visit: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    source_path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=stamp_now)


class RejectionPatient(Base):
    """One patient (pseudonym, or ``invalid-id-<hash>`` for an invalid source id) whose manifest
    line or visit referenced a rejected file: a file shared by many patients names them all."""

    __tablename__ = "rejection_patients"
    __table_args__ = (UniqueConstraint("rejection_id", "patient", "visit"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    rejection_id: Mapped[int] = mapped_column(ForeignKey("rejections.id", ondelete="CASCADE"))
    patient: Mapped[str] = mapped_column(String(64))
    visit: Mapped[str] = mapped_column(String(64), default="")
    line: Mapped[int | None] = mapped_column(Integer)


class Review(Base):
    """A registered scan or label the quality gate held back (``needs_review``): kept out of
    training and prediction until a person accepts it (``accepted``) or confirms the rejection
    (``rejected``)."""

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int | None] = mapped_column(
        ForeignKey("scans.id", ondelete="CASCADE"), unique=True
    )
    label_id: Mapped[int | None] = mapped_column(
        ForeignKey("labels.id", ondelete="CASCADE"), unique=True
    )
    reason: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=NEEDS_REVIEW)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=stamp_now)
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
