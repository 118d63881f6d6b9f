"""The hand-over between registration and learning: a patient's registered, aligned visits.

Registration writes every accepted visit onto the model grid, aligned to the patient's baseline;
``mtlgen.registry`` lists them as ``PatientSeries``. Datasets read nothing else.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from mtlgen.io.validate import InvalidScan, read_volume


@dataclass(frozen=True)
class SourceScan:
    """A visit's reference source scan (a NIfTI file or DICOM folder; a private path, never
    shown) and ``to_baseline``, the 4x4 rows that map its world (RAS mm) onto the baseline's."""

    path: Path
    to_baseline: tuple[tuple[float, ...], ...]

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.to_baseline, dtype=np.float64)


@dataclass(frozen=True)
class VisitVolumes:
    """One visit on the model grid (all paths are processed NIfTI files on the same grid);
    ``source`` and ``date`` are what outputs in the scan's own space need (None: unknown)."""

    visit: str  # pseudonymous visit key, a plain token
    days: float  # days since the patient's baseline visit
    images: dict[str, Path]  # contrast (e.g. "T1w", "FLAIR") -> normalised float32 image
    label: Path | None = None  # 0 background, 1 lesion core, 2 edema
    source: SourceScan | None = None
    date: dt.date | None = None


@dataclass(frozen=True)
class PatientSeries:
    """All registered visits of one patient, ordered by time; ``patient`` is the pseudonym."""

    patient: str
    visits: tuple[VisitVolumes, ...]

    def __post_init__(self) -> None:
        days = [v.days for v in self.visits]
        if days != sorted(days):
            raise ValueError(f"patient {self.patient}: visits must be ordered by days, got {days}")


@dataclass(frozen=True)
class VisitArrays:
    """A visit loaded into memory: ``images`` [contrast -> float32 array], ``label`` uint8 or
    None."""

    visit: str
    days: float
    images: dict[str, np.ndarray]
    label: np.ndarray | None
    affine: np.ndarray


def load_visit(visit: VisitVolumes) -> VisitArrays:
    """Read one visit's processed volumes; every file must share the first image's grid."""
    images, affine, shape = {}, None, None
    for contrast, path in visit.images.items():
        img = nib.load(path)
        if affine is None:
            affine, shape = img.affine, img.shape
        elif img.shape != shape or not np.allclose(img.affine, affine, atol=1e-4):
            raise ValueError(f"{path}: grid differs from the visit's first image {shape}")
        images[contrast] = np.asarray(img.dataobj, dtype=np.float32)
    if affine is None:
        raise ValueError(f"visit {visit.visit}: no images")
    label = None
    if visit.label is not None:
        lab = nib.load(visit.label)
        if lab.shape != shape:
            raise ValueError(f"{visit.label}: label shape {lab.shape} != image shape {shape}")
        label = np.asarray(lab.dataobj, dtype=np.uint8)
    return VisitArrays(visit.visit, visit.days, images, label, affine)


class SourceUnavailable(ValueError):
    """A visit's source scan is unknown or can no longer be read (native-space outputs)."""


def source_geometry(
    visit: VisitVolumes, patient: str
) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """(shape, affine, to_baseline) of ``visit``'s reference source scan, read now. Errors
    name the patient and visit, never the (private) source path."""
    where = f"patient {patient} visit {visit.visit}"
    if visit.source is None:
        raise SourceUnavailable(f"{where}: the registry names no source scan; use --space model")
    try:
        if not visit.source.path.exists():
            raise FileNotFoundError("gone")
        vol = read_volume((visit.source.path,))
    except (InvalidScan, OSError) as exc:
        reason = "is gone" if isinstance(exc, FileNotFoundError) else "is unreadable"
        raise SourceUnavailable(
            f"{where}: its source scan {reason}; native-space output needs it "
            "(use --space model for the model grid)"
        ) from None
    return tuple(int(n) for n in vol.data.shape), vol.affine, visit.source.matrix
