"""Growth from measured visits (rate in mL/year, volume doubling time) and status
probabilities from a calibrated forecast interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from mtlgen.progression import DAYS_PER_YEAR, STATUSES, Status

_MIN_ML = 1e-3  # volumes below this are left out of the log-linear fit


@dataclass(frozen=True)
class GrowthFit:
    """Least-squares fits of the lesion-core volume against time over the measured visits.

    ``rate_ml_per_year`` is the slope of the linear fit; ``log_rate_per_year`` that of the
    log-linear fit (ln mL per year), whose ``doubling_days`` is ln 2 / rate (negative: the
    halving time of a shrinking lesion; None when flat or not fitted).
    """

    visits: int
    rate_ml_per_year: float
    intercept_ml: float
    log_rate_per_year: float | None
    log_intercept: float | None

    @property
    def doubling_days(self) -> float | None:
        if not self.log_rate_per_year:
            return None
        return math.log(2) / self.log_rate_per_year * DAYS_PER_YEAR

    def linear_ml(self, days: np.ndarray) -> np.ndarray:
        """The linear fit's volume (mL) at ``days``."""
        return self.intercept_ml + self.rate_ml_per_year * np.asarray(days) / DAYS_PER_YEAR

    def exponential_ml(self, days: np.ndarray) -> np.ndarray | None:
        """The log-linear fit's volume (mL) at ``days``, None without that fit."""
        if self.log_rate_per_year is None or self.log_intercept is None:
            return None
        return np.exp(
            self.log_intercept + self.log_rate_per_year * np.asarray(days) / DAYS_PER_YEAR
        )


def fit_growth(days: Sequence[float], core_ml: Sequence[float]) -> GrowthFit | None:
    """Linear and log-linear fits of ``core_ml`` against ``days``; None with fewer than two
    visits at distinct days. The log-linear fit needs two visits with volume above 0.001 mL."""
    t = np.asarray(days, dtype=float) / DAYS_PER_YEAR
    v = np.asarray(core_ml, dtype=float)
    if len(t) < 2 or np.ptp(t) == 0:
        return None
    slope, intercept = np.polyfit(t, v, 1)
    positive = v > _MIN_ML
    log_slope = log_intercept = None
    if positive.sum() >= 2 and np.ptp(t[positive]) > 0:
        log_slope, log_intercept = (
            float(x) for x in np.polyfit(t[positive], np.log(v[positive]), 1)
        )
    return GrowthFit(len(t), float(slope), float(intercept), log_slope, log_intercept)


def status_probabilities(
    point_ml: float,
    high_ml: float | None,
    level: float | None,
    reference_ml: float,
    increase: float,
    decrease: float,
) -> dict[Status, float] | None:
    """Probability of each status at the forecast date, from the calibrated interval.

    The calibration's interval is symmetric in log1p(volume) around the forecast
    (``mtlgen.inference.intervals``): read as a normal distribution of log1p(volume) whose
    central ``level`` mass is the interval. None without a (bounded) interval or a reference
    volume above 0.
    """
    if high_ml is None or level is None or reference_ml <= 0:
        return None
    centre = math.log1p(max(point_ml, 0.0))
    half = math.log1p(high_ml) - centre
    if half <= 0:
        return None
    sigma = half / NormalDist().inv_cdf(0.5 + level / 2)
    dist = NormalDist(centre, sigma)
    up = dist.cdf(math.log1p(reference_ml * (1 + increase)))
    down = dist.cdf(math.log1p(reference_ml * max(1 - decrease, 0.0)))
    probs = {"progressive": 1 - up, "stable": up - down, "responding": down}
    return {s: probs[s] for s in STATUSES}
