"""Paired comparison of two models scored on the same test cases: the difference of a metric
and its percentile-bootstrap confidence interval, resampling cases (both models' scores of a
case travel together, so case difficulty cancels out)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mtlgen.evaluate.aggregate import summary
from mtlgen.evaluate.metrics import status_scores

STATUS_METRICS = ("status_accuracy", "status_macro_f1")
CaseScores = Mapping[str, Mapping[str, object]]  # case id -> {metric or status field: value}


@dataclass(frozen=True)
class PairedDifference:
    """``improvement``: how much better the candidate is (metric units, positive = better);
    ``low``/``high``: its two-sided bootstrap interval at the given confidence; ``n``: cases."""

    improvement: float
    low: float
    high: float
    n: int


def metric_over(rows: Sequence[Mapping[str, object]], metric: str) -> float:
    """``metric`` over ``rows`` as ``mtlgen evaluate`` aggregates it: the mean of the defined
    per-case values, or the status accuracy / macro-F1 of the cases with a true status."""
    if metric in STATUS_METRICS:
        scored = [r for r in rows if r.get("status_true")]
        acc, f1 = status_scores(
            [r["status_true"] for r in scored], [r["status_pred"] for r in scored]
        )
        return acc if metric == "status_accuracy" else f1
    mean = summary([math.nan if r.get(metric) is None else float(r[metric]) for r in rows])["mean"]
    return math.nan if mean is None else mean


def paired_bootstrap(
    candidate: CaseScores,
    champion: CaseScores,
    metric: str,
    direction: Literal["max", "min"],
    confidence: float,
    resamples: int,
    seed: int = 0,
) -> PairedDifference:
    """The candidate's improvement over the champion on the cases both were scored on, with a
    percentile bootstrap interval over those cases (fixed ``seed``: the same inputs give the
    same interval). Raises ``ValueError`` when the two share no case."""
    cases = sorted(set(candidate) & set(champion))
    if not cases:
        raise ValueError(f"{metric}: the two models share no scored case")
    sign = 1.0 if direction == "max" else -1.0

    def improvement(picked: Sequence[str]) -> float:
        cand = metric_over([candidate[c] for c in picked], metric)
        champ = metric_over([champion[c] for c in picked], metric)
        return sign * (cand - champ)

    rng = np.random.default_rng(seed)
    draws = np.array(
        [
            improvement([cases[i] for i in rng.integers(0, len(cases), len(cases))])
            for _ in range(resamples)
        ]
    )
    draws = draws[~np.isnan(draws)]
    point = improvement(cases)
    if draws.size == 0 or math.isnan(point):
        raise ValueError(f"{metric}: undefined on the shared cases")
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return PairedDifference(point, float(low), float(high), len(cases))
