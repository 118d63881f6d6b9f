"""Per-patient registration outcomes for orchestration logs and artifacts, without source ids.

Rejection reasons and I/O errors can carry source file paths and source patient ids; everything
that leaves the registry (Prefect logs, artifacts) goes through ``redact`` first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mtlgen.io.source_types import PatientSource
from mtlgen.register.results import PatientResult


def redact(text: str, src: PatientSource, label: str) -> str:
    """``text`` with the patient's file paths replaced by ``<visit/modality file>`` and its source
    id replaced by ``label`` (its pseudonym)."""
    for visit in src.visits:
        for scan in visit.files():
            for path in {str(scan.path), *map(str, scan.files)}:
                text = text.replace(path, f"<{visit.visit_id}/{scan.modality} file>")
    if src.patient_id:
        pattern = rf"(?<![A-Za-z0-9]){re.escape(src.patient_id)}(?![A-Za-z0-9])"
        text = re.sub(pattern, label, text)
    return text


@dataclass(frozen=True)
class PatientOutcome:
    """What registration did for one patient: ``rejected`` holds (visit, kind, reason) rows."""

    patient: str
    registered: int = 0
    unchanged: int = 0
    rejected: tuple[tuple[str, str, str], ...] = ()
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        if self.rejected:
            return "rejected"
        return "registered" if self.registered else "unchanged"

    @property
    def reason(self) -> str:
        if self.error:
            return self.error
        return "; ".join(f"{visit} {kind}: {why}" for visit, kind, why in self.rejected)


def outcome_of(result: PatientResult, src: PatientSource, label: str) -> PatientOutcome:
    """The redacted outcome of ``register_patient``; ``label`` names a patient whose source id
    was invalid (no pseudonym)."""
    name = result.pseudonym or label
    rows = tuple((r.visit or "-", r.kind, redact(r.reason, src, name)) for r in result.rejected)
    return PatientOutcome(name, result.registered, result.unchanged, rows)


def summary_rows(outcomes: Sequence[PatientOutcome]) -> list[dict[str, object]]:
    """One table row per patient (for a Prefect table artifact or a TSV)."""
    return [
        {
            "patient": o.patient,
            "status": o.status,
            "registered": o.registered,
            "unchanged": o.unchanged,
            "rejected": len(o.rejected),
            "reason": o.reason,
        }
        for o in outcomes
    ]


def summary_line(outcomes: Sequence[PatientOutcome]) -> str:
    """``"4 patients: 12 files registered, 0 unchanged, 1 rejected; failed: p1 (why)"``."""
    failed = [o for o in outcomes if o.status in ("rejected", "error")]
    line = (
        f"{len(outcomes)} patients: {sum(o.registered for o in outcomes)} files registered, "
        f"{sum(o.unchanged for o in outcomes)} unchanged, "
        f"{sum(len(o.rejected) for o in outcomes)} rejected"
    )
    if failed:
        line += f"; {len(failed)} patient(s) failed: " + "; ".join(
            f"{o.patient} ({o.reason})" for o in failed
        )
    return line
