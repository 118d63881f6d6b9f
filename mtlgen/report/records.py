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

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from mtlgen.config import RegistryConfig
from mtlgen.io.series import PatientSeries, VisitVolumes
from mtlgen.registry.db import session_scope
from mtlgen.registry.models import CURRENT, Label, Patient, PatientId, Rejection, Scan, Visit

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
        """The processed visits as the models read them (visits with a processed scan)."""
        visits = []
        for visit in self.visits:
            images = {s.contrast: Path(s.processed) for s in visit.scans if s.processed}
            if images:
                label = visit.label.processed if visit.label else None
                visits.append(
                    VisitVolumes(visit.key, visit.days, images, Path(label) if label else None)
                )
        return PatientSeries(self.pseudonym, tuple(visits))


def _scan_row(row: Scan | Label, contrast: str) -> ScanRow:
    result = row.result
    return ScanRow(
        contrast,
        row.version,
        row.sha256,
        result.processed_path if result else None,
        result.mi if result else None,
        result.ncc if result else None,
    )


def redact_paths(text: str) -> str:
    """``text`` with every path-like word replaced by ``[file]`` (a path may hold a source id)."""
    return _PATH.sub("[file]", text)


def read_patients(reg: RegistryConfig, patients: list[str] | None = None) -> list[PatientRows]:
    """Registry rows of ``patients`` (pseudonyms; every patient when None), by pseudonym."""
    with session_scope(reg.url, reg.sqlite_timeout_s) as s:
        query = select(Patient).order_by(Patient.pseudonym)
        if patients is not None:
            query = query.where(Patient.pseudonym.in_(patients))
        query = query.options(
            selectinload(Patient.visits).selectinload(Visit.scans).selectinload(Scan.result),
            selectinload(Patient.visits).selectinload(Visit.labels).selectinload(Label.result),
        )
        found = s.scalars(query).all()
        names = [p.pseudonym for p in found]
        rejected: dict[str, list[str]] = {}
        for r in s.scalars(
            select(Rejection).where(Rejection.pseudonym.in_(names)).order_by(Rejection.id)
        ):
            where = f"visit {r.visit}" if r.visit else "patient"
            rejected.setdefault(r.pseudonym, []).append(
                f"{where} {r.kind}: {redact_paths(r.reason)}"
            )
        out = []
        for p in found:
            visits = []
            for v in sorted(p.visits, key=lambda v: (v.days, v.key)):
                scans = sorted(
                    (_scan_row(sc, sc.modality) for sc in v.scans if sc.status == CURRENT),
                    key=lambda r: r.contrast,
                )
                labels = [_scan_row(lb, "label") for lb in v.labels if lb.status == CURRENT]
                visits.append(
                    VisitRow(
                        v.key, v.date, float(v.days), tuple(scans), labels[0] if labels else None
                    )
                )
            out.append(
                PatientRows(
                    p.pseudonym,
                    p.baseline_date,
                    p.reference,
                    tuple(visits),
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
