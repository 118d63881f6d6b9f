"""Baseline predictors that every model is shown against, in the same run.

- ``copy_last``: the reference visit's images, label and core volume; status ``stable``.
- ``linear`` / ``exponential`` extrapolation: the core volume fitted over the context visits'
  label volumes (least squares in days; exponential = log-linear fit), evaluated at the target
  time; images and label are copied as by copy-last; status follows the fitted volume
  through ``mtlgen.progression.progression_status``.

The *reference visit* is the latest context visit at or before the target time (for a future
target, the last context visit; for a reconstruction, the visit just before the gap). A
contrast the reference visit lacks is carried forward from the latest earlier visit that has it
(else the nearest later one), as the models' own copy-last image does
(``mtlgen.models.mtl_net.reference_image``): every predictor answers the same contrasts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from mtlgen.inference.prediction import Prediction, Predictor
from mtlgen.io.series import VisitArrays
from mtlgen.progression import label_volume_ml, progression_status

log = logging.getLogger(__name__)

BASELINES = ("copy_last", "linear", "exponential")
Baseline = Literal["copy_last", "linear", "exponential"]


def reference_visit(context: Sequence[VisitArrays], target_days: float) -> VisitArrays:
    """The latest context visit at or before ``target_days`` (else the earliest one)."""
    if not context:
        raise ValueError("a prediction needs at least one context visit")
    before = [v for v in context if v.days <= target_days]
    return max(before, key=lambda v: v.days) if before else min(context, key=lambda v: v.days)


def _labelled(visit: VisitArrays, who: str) -> np.ndarray:
    if visit.label is None:
        raise ValueError(f"{who}: context visit {visit.visit!r} has no label to copy")
    return visit.label


def carried_images(context: Sequence[VisitArrays], target_days: float) -> dict[str, np.ndarray]:
    """Per contrast any context visit has, the image of the latest visit at or before
    ``target_days`` that has it, else of the earliest later one (copies)."""
    before = sorted((v for v in context if v.days <= target_days), key=lambda v: -v.days)
    after = sorted((v for v in context if v.days > target_days), key=lambda v: v.days)
    images: dict[str, np.ndarray] = {}
    for visit in (*before, *after):
        for contrast, image in visit.images.items():
            images.setdefault(contrast, image.copy())
    return images


def _copy(
    ref: VisitArrays,
    context: Sequence[VisitArrays],
    target_days: float,
    who: str,
    volume_ml: float,
    status,
) -> Prediction:
    """The reference visit's label and the carried-forward images, with a volume and status."""
    label = _labelled(ref, who).copy()
    return Prediction(carried_images(context, target_days), label, volume_ml, status)


@dataclass
class CopyLast:
    """The last observed visit is the prediction: images, label, volume; status ``stable``."""

    name: str = "copy_last"
    segments: ClassVar[bool] = False  # needs the labels it copies: no ``current`` cases

    def predict(self, context: Sequence[VisitArrays], target_days: float) -> Prediction:
        ref = reference_visit(context, target_days)
        volume = label_volume_ml(_labelled(ref, self.name), ref.affine)
        return _copy(ref, context, target_days, self.name, volume, "stable")


def fit_volume(
    days: Sequence[float], volumes_ml: Sequence[float], target_days: float, law: str
) -> float | None:
    """Least-squares ``law`` fit of volume over time, evaluated at ``target_days`` (>= 0 mL).

    ``linear``: V = a + b t. ``exponential``: log V = a + b t over the visits with V > 0.
    Returns None when fewer than two distinct times are usable (the caller falls back).
    """
    t, v = np.asarray(days, dtype=float), np.asarray(volumes_ml, dtype=float)
    if law == "exponential":
        t, v = t[v > 0], np.log(v[v > 0])
    elif law != "linear":
        raise ValueError(f"volume law {law!r}: expected 'linear' or 'exponential'")
    if len(np.unique(t)) < 2:
        return None
    slope, intercept = np.polyfit(t, v, 1)
    value = intercept + slope * target_days
    return float(np.exp(value)) if law == "exponential" else max(float(value), 0.0)


@dataclass
class VolumeExtrapolation:
    """Core volume extrapolated over the context visits; images/label copied from the reference.

    With fewer than two usable context volumes it falls back to copy-last's volume, logs it and
    counts it in ``fallbacks`` (the evaluation report prints the count).
    """

    law: Literal["linear", "exponential"]
    increase: float
    decrease: float
    fallbacks: int = 0
    segments: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return self.law

    def predict(self, context: Sequence[VisitArrays], target_days: float) -> Prediction:
        ref = reference_visit(context, target_days)
        ref_ml = label_volume_ml(_labelled(ref, self.name), ref.affine)
        seen = [v for v in context if v.label is not None]
        volume = fit_volume(
            [v.days for v in seen],
            [label_volume_ml(v.label, v.affine) for v in seen],
            target_days,
            self.law,
        )
        if volume is None:
            self.fallbacks += 1
            log.debug("%s: fewer than two usable context volumes, copying the last", self.name)
            volume = ref_ml
        status = progression_status(ref_ml, volume, self.increase, self.decrease)
        return _copy(ref, context, target_days, self.name, volume, status)


def make_baseline(name: Baseline, increase: float, decrease: float) -> Predictor:
    """Build a baseline by name (see ``BASELINES``) with the progression thresholds."""
    if name == "copy_last":
        return CopyLast()
    if name in ("linear", "exponential"):
        return VolumeExtrapolation(name, increase, decrease)
    raise ValueError(f"baseline {name!r}: expected one of {BASELINES}")
