"""The shape of a registration source: patients, their visits and the files of each visit.

Shared by every discovery (``mtlgen.io.sources`` for BIDS and CSV manifests, ``mtlgen.io.dicom``
for DICOM folders) and by registration, which reads them. Also the helpers every discovery
applies: visit dates (``parse_date``) and duplicate visits (``mark_duplicates``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path

LABEL = "label"  # the modality name of a visit's label (segmentation)


@dataclass(frozen=True)
class ScanSource:
    """One image (or label) of a visit: a NIfTI file, or the files of one DICOM series;
    ``line`` is the manifest line that named it (None for BIDS and DICOM sources)."""

    modality: str
    files: tuple[Path, ...]
    problem: str | None = None
    line: int | None = None

    @property
    def path(self) -> Path:
        """The file, or the folder holding a DICOM series (for messages and records)."""
        return self.files[0] if len(self.files) == 1 else self.files[0].parent


@dataclass(frozen=True)
class VisitSource:
    """One visit: its source id, its date (or explicit days since baseline), scans and label."""

    visit_id: str
    date: date | None
    scans: tuple[ScanSource, ...]
    label: ScanSource | None = None
    days: float | None = None
    problem: str | None = None

    def files(self) -> list[ScanSource]:
        return [*self.scans, *([self.label] if self.label else [])]


@dataclass(frozen=True)
class PatientSource:
    """All visits of one source patient. ``patient_id`` is the *source* id (never stored as is);
    ``root`` is the source folder its files must lie under (see ``mtlgen.io.policy``)."""

    patient_id: str
    visits: tuple[VisitSource, ...]
    origin: str = field(default="bids", compare=False)
    root: Path | None = field(default=None, compare=False)

    def files(self) -> list[ScanSource]:
        return [s for v in self.visits for s in v.files()]


def parse_date(text: str | None) -> date:
    """ISO date or date-time (``2018-05-22``, ``2018-05-22T14:47:00``) or DICOM ``20180522``."""
    text = (text or "").strip()
    if not text or text.lower() in {"n/a", "na", "nan", "none"}:
        raise ValueError("missing visit date")
    try:
        if re.fullmatch(r"\d{8}", text):
            return datetime.strptime(text, "%Y%m%d").date()
        return datetime.fromisoformat(text).date()
    except ValueError:
        raise ValueError(f"unparsable visit date {text!r} (expected YYYY-MM-DD)") from None


def mark_duplicates(visits: list[VisitSource]) -> tuple[VisitSource, ...]:
    """A second visit on the same date (or day) as an earlier one is a duplicate visit."""
    first: dict[object, str] = {}
    out = []
    for v in visits:
        when = v.date if v.date is not None else v.days
        if v.problem is None and when is not None:
            if when in first:
                v = replace(v, problem=f"duplicate visit: same date as visit {first[when]}")
            else:
                first[when] = v.visit_id
        out.append(v)
    return tuple(out)
