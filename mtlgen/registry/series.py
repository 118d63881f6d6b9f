"""The hand-over to learning: every patient's current visits on the model grid."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from mtlgen.io.series import PatientSeries, SourceScan, VisitVolumes
from mtlgen.registry.db import session_scope
from mtlgen.registry.models import ACCEPTED, CURRENT, Label, Patient, Scan, Visit


def load_series(url: str, sqlite_timeout_s: float = 120.0) -> list[PatientSeries]:
    """Each patient's accepted, latest-version visits, aligned to its baseline, sorted by days.

    ``url`` is the registry's SQLAlchemy URL (``params.registry.url``). Only pseudonymous ids
    appear. A visit is listed if at least one of its current scans has a processed file; its
    label is the current label's processed file, if any. Files the quality gate holds back
    (``needs_review``, or rejected on review) are left out. Each visit also carries its
    reference source scan (the contrast it was aligned on, else its first) with its
    ``to_baseline``, and its calibration date (None where unknown).
    """
    with session_scope(url, sqlite_timeout_s) as s:
        patients = s.scalars(
            select(Patient)
            .order_by(Patient.pseudonym)
            .options(
                selectinload(Patient.visits).selectinload(Visit.scans).selectinload(Scan.result),
                selectinload(Patient.visits).selectinload(Visit.scans).selectinload(Scan.review),
                selectinload(Patient.visits).selectinload(Visit.labels).selectinload(Label.result),
                selectinload(Patient.visits).selectinload(Visit.labels).selectinload(Label.review),
            )
        ).all()
        series = []
        for patient in patients:
            visits = []
            for visit in sorted(patient.visits, key=lambda v: (v.days, v.key)):
                scans = sorted((s for s in visit.scans if _usable(s)), key=lambda s: s.modality)
                images = {scan.modality: Path(scan.result.processed_path) for scan in scans}
                labels = [lb for lb in visit.labels if _usable(lb)]
                if images:
                    label = Path(labels[0].result.processed_path) if labels else None
                    visits.append(
                        VisitVolumes(
                            visit.key,
                            float(visit.days),
                            images,
                            label,
                            _reference_source(scans),
                            visit.date,
                        )
                    )
            if visits:
                series.append(PatientSeries(patient.pseudonym, tuple(visits)))
        return series


def _reference_source(scans: list[Scan]) -> SourceScan:
    """The scan a visit was aligned on (its result's reference contrast), else its first."""
    reference = next((s for s in scans if s.modality == s.result.reference), scans[0])
    matrix = json.loads(reference.result.to_baseline)
    return SourceScan(Path(reference.source_path), tuple(tuple(map(float, r)) for r in matrix))


def _usable(row: Scan | Label) -> bool:
    """Current, processed, and not held back by the quality gate (or accepted on review)."""
    held = row.review is not None and row.review.state != ACCEPTED
    return row.status == CURRENT and row.result is not None and not held
