"""Calibrated intervals for a predicted lesion-core volume: split conformal prediction.

The score of a calibration case is its log-volume error per year of horizon, ``|log1p(true) -
log1p(predicted)| / max(horizon, min_days)`` (volumes in mL; the horizon is the distance from
the target to the nearest context visit): an error in a growth rate grows with the time it is
extrapolated over. Calibration cases are never the test patients': the validation patients',
and the training patients' where the forecast is still out of sample there
(``mtlgen.evaluate.calibration``). Per group (case kind, and one against several context
visits: a single visit has no trajectory) the radius is the ``ceil((n + 1) * level)``-th
smallest of the group's ``n`` scores, and a case's interval is ``expm1(log1p(predicted) +-
radius * max(horizon, min_days))`` (in years), clipped at 0. Exchangeable cases are then
covered with probability >= ``level`` per group. A group with too few cases for a finite radius
borrows its kind's scores, then every kind's; with too few of those too, the interval is
unbounded. The signed errors are kept per group (``rates``): the generator's samples are
calibrated to their distribution (``mtlgen.generative.volumes``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mtlgen.io.atomic import write_text_atomic
from mtlgen.progression import DAYS_PER_YEAR

CALIBRATION_FILE = "calibration.json"  # beside a checkpoint's weights: its volume intervals
ALL = "all"


@dataclass(frozen=True)
class VolumeCase:
    """One calibration case: what was predicted and what was true, and what the group is."""

    kind: str
    context_visits: int
    horizon_days: float
    predicted_ml: float
    true_ml: float


def group_of(kind: str, context_visits: int) -> str:
    """``<kind>:1`` (one context visit) or ``<kind>:2+``."""
    return f"{kind}:{'1' if context_visits <= 1 else '2+'}"


def horizon_days(context_days: Iterable[float], target_days: float) -> float:
    """Days from the target to the nearest context visit."""
    return min(abs(target_days - d) for d in context_days)


def horizon_years(horizon: float, min_days: float) -> float:
    """The horizon in years, counted as at least ``min_days``."""
    return max(horizon, min_days) / DAYS_PER_YEAR


def signed_rate(case: VolumeCase, min_days: float) -> float:
    """(log1p(true) - log1p(predicted)) per year of horizon."""
    error = math.log1p(case.true_ml) - math.log1p(max(case.predicted_ml, 0.0))
    return error / horizon_years(case.horizon_days, min_days)


def conformal_radius(scores: Sequence[float], level: float) -> float | None:
    """The ``ceil((n + 1) * level)``-th smallest score; None (unbounded) when that exceeds n."""
    rank = math.ceil((len(scores) + 1) * level - 1e-9)
    if rank > len(scores):
        return None
    return sorted(scores)[rank - 1]


@dataclass(frozen=True)
class VolumeCalibration:
    """Radius per group (per year of horizon), fitted by ``fit``; ``interval`` applies it."""

    level: float
    min_days: float
    radius: dict[str, float | None]  # group, kind or "all" -> radius (None: too few cases)
    cases: dict[str, int] = field(default_factory=dict)  # the same keys -> calibration cases
    rates: dict[str, list[float]] = field(default_factory=dict)  # group -> ``signed_rate``s

    def __post_init__(self) -> None:
        if not 0 < self.level < 1:
            raise ValueError(f"interval level must be in (0, 1), got {self.level}")
        if self.min_days <= 0:
            raise ValueError(f"interval min_days must be > 0, got {self.min_days}")
        bad = {k: r for k, r in self.radius.items() if r is not None and not r >= 0}
        if bad:
            raise ValueError(f"interval radii must be >= 0, got {bad}")

    @classmethod
    def fit(cls, cases: Sequence[VolumeCase], level: float, min_days: float) -> VolumeCalibration:
        """Radii of every group, kind and of all ``cases`` pooled."""
        scored: dict[str, list[float]] = {ALL: []}
        rates: dict[str, list[float]] = {}
        for case in cases:
            value = signed_rate(case, min_days)
            group = group_of(case.kind, case.context_visits)
            rates.setdefault(group, []).append(round(value, 6))
            for key in (group, case.kind, ALL):
                scored.setdefault(key, []).append(abs(value))
        radius = {key: conformal_radius(scores, level) for key, scores in scored.items()}
        counts = {key: len(s) for key, s in scored.items()}
        return cls(level, min_days, radius, counts, {k: sorted(v) for k, v in rates.items()})

    def radius_for(self, kind: str, context_visits: int) -> float | None:
        """The group's radius, else its kind's, else the pooled one (None: unbounded)."""
        for key in (group_of(kind, context_visits), kind, ALL):
            if self.radius.get(key) is not None:
                return self.radius[key]
        return None

    def interval(
        self, kind: str, context_visits: int, horizon: float, predicted_ml: float
    ) -> tuple[float, float]:
        """(low, high) mL around ``predicted_ml``; (0, inf) when no radius is finite."""
        radius = self.radius_for(kind, context_visits)
        if radius is None:
            return 0.0, math.inf
        centre = math.log1p(max(predicted_ml, 0.0))
        half = radius * horizon_years(horizon, self.min_days)
        return max(math.expm1(centre - half), 0.0), math.expm1(centre + half)

    def to_dict(self) -> dict:
        return {
            "method": "split conformal, |log1p volume error| per year of horizon",
            "level": self.level,
            "min_days": self.min_days,
            "radius_per_year": self.radius,
            "cases": self.cases,
            "rates_per_year": self.rates,
        }

    @classmethod
    def from_dict(cls, data: dict, where: str = "calibration") -> VolumeCalibration:
        try:
            radius = data["radius_per_year"].items()
            return cls(
                float(data["level"]),
                float(data["min_days"]),
                {str(k): None if r is None else float(r) for k, r in radius},
                {str(k): int(n) for k, n in data.get("cases", {}).items()},
                {str(k): [float(r) for r in v] for k, v in data.get("rates_per_year", {}).items()},
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"{where}: not a volume calibration ({exc})") from None

    def save(self, directory: Path | str) -> Path:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        return write_text_atomic(Path(directory) / CALIBRATION_FILE, text)


def load_calibration(directory: Path | str) -> VolumeCalibration | None:
    """The calibration saved beside a checkpoint, or None if it has none."""
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    return VolumeCalibration.from_dict(data, str(path))


def interval_scores(low: float, high: float, true_ml: float, level: float) -> dict[str, float]:
    """Per-case interval metrics: covered (1/0, to rounding), width (mL) and the interval
    (Winkler) score, width plus 2 / (1 - level) times the distance by which the truth falls
    outside."""
    miss = max(low - true_ml, 0.0) + max(true_ml - high, 0.0)
    return {
        "volume_interval_coverage": float(miss <= 1e-9 * (1.0 + abs(true_ml))),
        "volume_interval_width_ml": high - low,
        "volume_interval_score": (high - low) + 2.0 / (1.0 - level) * miss,
    }
