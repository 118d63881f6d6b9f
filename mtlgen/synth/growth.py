"""Lesion volume laws over continuous time (days since baseline)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mtlgen.progression import DAYS_PER_YEAR, Status


@dataclass(frozen=True)
class GrowthLaw:
    """Lesion-core volume V(t) in mL, t in days since baseline.

    - ``progressive``: Gompertz growth ``V = K exp(ln(V0/K) exp(-r t))``.
    - ``stable``: ``V = V0``.
    - ``responding``: Gompertz until ``treatment_day``, then exponential decay towards a residual
      ``V = R + (V_tx - R) exp(-k (t - t_tx))`` with ``R = residual_fraction * V_tx``.

    Rates ``r`` and ``k`` are per year.
    """

    course: Status
    v0_ml: float
    carrying_capacity_ml: float
    growth_rate: float
    treatment_day: float | None = None
    shrink_rate: float = 0.0
    residual_fraction: float = 0.3

    def _gompertz(self, days: np.ndarray) -> np.ndarray:
        years = days / DAYS_PER_YEAR
        ratio = np.log(self.v0_ml / self.carrying_capacity_ml)
        return self.carrying_capacity_ml * np.exp(ratio * np.exp(-self.growth_rate * years))

    def volume(self, days: float | np.ndarray) -> np.ndarray:
        t = np.asarray(days, dtype=float)
        if self.course == "stable":
            return np.full_like(t, self.v0_ml)
        grown = self._gompertz(t)
        if self.course == "progressive":
            return grown
        t_tx = float(self.treatment_day)
        v_tx = float(self._gompertz(np.asarray(t_tx)))
        residual = self.residual_fraction * v_tx
        decay = np.exp(-self.shrink_rate * np.clip(t - t_tx, 0, None) / DAYS_PER_YEAR)
        return np.where(t <= t_tx, grown, residual + (v_tx - residual) * decay)

    def to_dict(self) -> dict:
        return asdict(self)
