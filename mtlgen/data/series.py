"""The hand-over between registration and learning: a patient's registered, aligned visits.

Registration writes every accepted visit onto the model grid, aligned to the patient's baseline;
``mtlgen.registry`` lists them as ``PatientSeries``. Datasets read nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VisitVolumes:
    """One visit on the model grid (all paths are processed NIfTI files on the same grid)."""

    visit: str  # pseudonymous visit key, a plain token
    days: float  # days since the patient's baseline visit
    images: dict[str, Path]  # contrast (e.g. "T1w", "FLAIR") -> normalised float32 image
    label: Path | None = None  # 0 background, 1 lesion core, 2 edema


@dataclass(frozen=True)
class PatientSeries:
    """All registered visits of one patient, ordered by time; ``patient`` is the pseudonym."""

    patient: str
    visits: tuple[VisitVolumes, ...]

    def __post_init__(self) -> None:
        days = [v.days for v in self.visits]
        if days != sorted(days):
            raise ValueError(f"patient {self.patient}: visits must be ordered by days, got {days}")
