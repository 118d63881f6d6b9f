"""Lesion volume laws over continuous time (days since baseline)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mtlgen.progression import DAYS_PER_YEAR, Status


@dataclass(frozen=True)
class GrowthLaw:
    """Lesion-core volume V(t) in mL, t in days since baseline; rates ``r``, ``k`` per year.

    Growth (``law``) from ``V0`` towards the carrying capacity ``K``:

    - ``gompertz``: ``V = K exp(ln(V0/K) exp(-r t))`` (slows long before K);
    - ``logistic``: ``V = K / (1 + (K/V0 - 1) exp(-r t))`` (exponential, then levels off at K);
    - ``exponential``: ``V = min(V0 exp(r t), K)``;
    - ``linear``: ``V = min(V0 (1 + r t), K)``.

    Courses: ``progressive`` grows by the law; ``stable`` keeps ``V0``; ``responding`` grows until
    ``treatment_day``, then decays exponentially towards a residual
    ``V = R + (V_tx - R) exp(-k (t - t_tx))`` with ``R = residual_fraction * V_tx``.
    """

    course: Status
    v0_ml: float
    carrying_capacity_ml: float
    growth_rate: float
    treatment_day: float | None = None
    shrink_rate: float = 0.0
    residual_fraction: float = 0.3
    law: str = "gompertz"

    def _grown(self, days: np.ndarray) -> np.ndarray:
        years = days / DAYS_PER_YEAR
        v0, cap, r = self.v0_ml, self.carrying_capacity_ml, self.growth_rate
        if self.law == "gompertz":
            return cap * np.exp(np.log(v0 / cap) * np.exp(-r * years))
        if self.law == "logistic":
            return cap / (1.0 + (cap / v0 - 1.0) * np.exp(-r * years))
        if self.law == "exponential":
            return np.minimum(v0 * np.exp(r * years), cap)
        if self.law == "linear":
            return np.minimum(v0 * (1.0 + r * years), cap)
        raise ValueError(
            f"growth law {self.law!r}: expected gompertz, logistic, exponential, linear"
        )

    def volume(self, days: float | np.ndarray) -> np.ndarray:
        t = np.asarray(days, dtype=float)
        if self.course == "stable":
            return np.full_like(t, self.v0_ml)
        grown = self._grown(t)
        if self.course == "progressive":
            return grown
        t_tx = float(self.treatment_day)
        v_tx = float(self._grown(np.asarray(t_tx)))
        residual = self.residual_fraction * v_tx
        decay = np.exp(-self.shrink_rate * np.clip(t - t_tx, 0, None) / DAYS_PER_YEAR)
        return np.where(t <= t_tx, grown, residual + (v_tx - residual) * decay)

    def to_dict(self) -> dict:
        return asdict(self)
