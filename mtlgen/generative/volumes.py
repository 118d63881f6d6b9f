"""Calibrated volumes for the drawn samples: ensemble copula coupling.

The drawn label residuals give each sample a plausible lesion shape, but their volumes vary far
less than the forecast's real error (measured: the 80 % sample volume interval held 6 % of true
volumes on the demo cohort). As in the post-processing of weather ensembles, the marginal is
calibrated separately and the raw ensemble keeps the dependence: the samples' core volumes are
set to the quantiles of the base forecast's signed log-volume errors per year of horizon, the
very cases its conformal intervals are calibrated on (``rates_per_year`` of the base's
``calibration.json``, by the groups and horizon floor of ``mtlgen.inference.intervals``),
assigned in the order of the samples' own drawn volumes, and each drawn core is grown or shrunk
along its signed distance to its volume.

Volumes here are in ml: an error is ``log1p(true) - log1p(forecast)`` per year.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

LEVELS = np.linspace(0.0, 1.0, 21)  # the quantile levels a fitted spread keeps
MIN_CASES = 5  # a group with fewer calibration cases borrows its kind's, then every case's
ALL = "all"
GENERATED_KINDS = ("future", "reconstruction")  # the case kinds a generator draws


@dataclass(frozen=True)
class VolumeSpread:
    """Quantiles (at ``LEVELS``) of the log-volume error per year, by group, kind or ``all``;
    ``min_days`` is the horizon floor they were measured with."""

    min_days: float
    quantiles: dict[str, list[float]]
    cases: dict[str, int]

    @classmethod
    def fit(cls, rates: Mapping[str, Sequence[float]], min_days: float) -> VolumeSpread:
        """From the signed log-volume errors per year of calibration cases, by group
        (``VolumeCalibration.rates``); groups and kinds with fewer than ``MIN_CASES`` are left
        to their kind's or every case's quantiles (every case's are kept however few, with a
        warning: a small cohort still gets samples)."""
        pools: dict[str, list[float]] = {ALL: []}
        for group, values in rates.items():
            for key in (group, group.split(":")[0], ALL):
                pools.setdefault(key, []).extend(float(v) for v in values)
        if not pools[ALL]:
            raise ValueError("no calibration case: the sample volumes cannot be calibrated")
        if len(pools[ALL]) < MIN_CASES:
            log.warning(
                "sample volumes calibrated on %d cases only (%d or more steady them)",
                len(pools[ALL]),
                MIN_CASES,
            )
        kept = {k: v for k, v in pools.items() if k == ALL or len(v) >= MIN_CASES}
        return cls(
            min_days,
            {k: np.quantile(v, LEVELS).round(6).tolist() for k, v in kept.items()},
            {k: len(v) for k, v in kept.items()},
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def levels_for(self, group: str) -> np.ndarray:
        """The group's quantiles, else its kind's, else every case's."""
        for key in (group, group.split(":")[0], ALL):
            if key in self.quantiles:
                return np.asarray(self.quantiles[key])
        raise KeyError(f"volume spread has no quantiles for {group!r} nor a fallback")

    def targets(self, group: str, forecast: float, years: float, n: int) -> np.ndarray:
        """``n`` volumes (ml) ``years`` ahead (the floored horizon) of a ``forecast`` (ml) at
        evenly spaced levels 0..1 of the group's error distribution (so the p-th percentile of
        the samples is the distribution's p-th quantile)."""
        rates = np.interp(np.linspace(0.0, 1.0, n), LEVELS, self.levels_for(group))
        return np.maximum(np.expm1(np.log1p(forecast) + rates * years), 0.0)


def resize_core(label: np.ndarray, count: int) -> np.ndarray:
    """``label`` with its core (1) grown or shrunk to ``count`` voxels along the core's signed
    distance (grown from the lesion when there is no core; unchanged when there is no lesion):
    removed core becomes edema (2), grown core takes over what was there."""
    seed = label == 1
    if not seed.any():
        seed = label > 0
    if not seed.any():
        return label
    distance = ndimage.distance_transform_edt(~seed) - ndimage.distance_transform_edt(seed)
    order = np.argsort(distance, axis=None, kind="stable")[: int(count)]
    core = np.zeros(label.size, bool)
    core[order] = True
    core = core.reshape(label.shape)
    out = label.copy()
    out[(label == 1) & ~core] = 2
    out[core] = 1
    return out


def couple(labels: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each drawn label ``[n, *S]`` resized to a target core count, the r-th smallest drawn
    core getting the r-th smallest target (ties in drawing order)."""
    drawn = (labels == 1).reshape(len(labels), -1).sum(axis=1)
    ranks = np.argsort(np.argsort(drawn, kind="stable"), kind="stable")
    ordered = np.sort(targets)
    return np.stack(
        [resize_core(label, ordered[r]) for label, r in zip(labels, ranks, strict=True)]
    )
