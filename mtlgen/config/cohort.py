"""The ``synth`` section: the synthetic cohorts (the demo's, and stress cohorts)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mtlgen.config.base import Section

StorageTypes = ("int16", "uint16", "float32")
GrowthLawName = Literal["gompertz", "logistic", "exponential", "linear"]


def _each(value: object) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


class SynthConfig(Section):
    """Synthetic longitudinal cohort on the MNI ICBM152 2009 anatomy.

    The demo cohort uses the defaults; stress cohorts (``bench/cohorts/``) vary what a real
    cohort varies in: growth law and carrying capacity per patient, several lesions, anisotropic
    voxels, a mix of orientations and storage types, per-patient contrast.
    """

    out_dir: Path = Path("data/raw/demo")
    patients: int = Field(24, ge=1, le=10_000)
    workers: int = Field(2, ge=1, le=64)
    visits_min: int = Field(3, ge=2, le=50)
    visits_max: int = Field(6, ge=2, le=50)
    interval_days_min: float = Field(45.0, gt=0)
    interval_days_max: float = Field(240.0, gt=0)
    spacing_mm: float | tuple[float, float, float] = 2.0  # isotropic, or x, y, z
    orientation: str | list[str] = "RAS"  # a list: each patient draws one
    dtype: str | list[str] = "int16"  # a list: each patient draws one
    fraction_stable: float = Field(0.25, ge=0, le=1)
    fraction_responding: float = Field(0.25, ge=0, le=1)
    lesion_volume_ml: tuple[float, float] = (1.0, 4.0)
    lesion_max_volume_ml: float = Field(16.0, gt=0)
    # growth towards a carrying capacity: drawn per patient from capacity_ml (default: the one
    # lesion_max_volume_ml); "mixed" draws one of the laws per lesion
    growth_law: GrowthLawName | Literal["mixed"] = "gompertz"
    capacity_ml: tuple[float, float] | None = None
    lesions: tuple[int, int] = (1, 1)  # lesions per patient, drawn in [min, max]
    contrast_jitter: float = Field(0.0, ge=0, le=0.5)  # per-patient tissue/lesion contrast sd
    growth_rate_per_year: tuple[float, float] = (0.8, 2.5)
    shrink_rate_per_year: tuple[float, float] = (0.8, 2.0)
    edema_scale: float = Field(1.35, gt=1.0, le=3.0)
    deformation_mm: float = Field(3.0, ge=0, le=10)
    atrophy_per_year: float = Field(0.02, ge=0, le=0.2)
    max_rotation_deg: float = Field(10.0, ge=0, le=45)
    max_translation_mm: float = Field(10.0, ge=0, le=50)
    missing_contrast_prob: float = Field(0.15, ge=0, le=1)
    noise_sigma: float = Field(0.025, ge=0, le=0.5)
    bias_strength: float = Field(0.15, ge=0, le=1)

    @field_validator("spacing_mm")
    @classmethod
    def _spacing(cls, value):
        if not all(0.5 <= s <= 8.0 for s in _each(value)):
            raise ValueError("voxel sizes must be within 0.5 and 8 mm")
        return value

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, value):
        axis = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}
        for code in _each(value):
            if sorted(axis.get(c, -1) for c in str(code)) != [0, 1, 2]:
                raise ValueError(f"{code!r} is not a voxel order: one of L/R, A/P, S/I each (RAS)")
        return value

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value):
        bad = [d for d in _each(value) if d not in StorageTypes]
        if bad:
            raise ValueError(f"storage types {bad}: expected {', '.join(StorageTypes)}")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> SynthConfig:
        if self.visits_max < self.visits_min:
            raise ValueError("visits_max must be >= visits_min")
        if self.interval_days_max < self.interval_days_min:
            raise ValueError("interval_days_max must be >= interval_days_min")
        if self.fraction_stable + self.fraction_responding > 1:
            raise ValueError("fraction_stable + fraction_responding must be <= 1")
        for name in ("lesion_volume_ml", "growth_rate_per_year", "shrink_rate_per_year"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be an increasing pair of positive numbers")
        if self.lesion_max_volume_ml <= self.lesion_volume_ml[1]:
            raise ValueError("lesion_max_volume_ml must exceed lesion_volume_ml's upper bound")
        if self.capacity_ml is not None and not (
            self.lesion_volume_ml[1] < self.capacity_ml[0] <= self.capacity_ml[1]
        ):
            raise ValueError("capacity_ml must be an increasing pair above lesion_volume_ml")
        if not 1 <= self.lesions[0] <= self.lesions[1] <= 3:
            raise ValueError("lesions must be an increasing pair within [1, 3]")
        return self

    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        """The voxel size (x, y, z) in mm."""
        s = self.spacing_mm
        return (s, s, s) if isinstance(s, float | int) else tuple(float(v) for v in s)
