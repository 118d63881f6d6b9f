"""Is a predicted probability of growth what it says? The reliability table of "grows by at
least ``progression.increase``" (status ``progressive``) over the future and reconstruction
cases: per bin of predicted probability, its mean and the observed frequency; and the Brier
score. A deterministic predictor says 0 or 1 (its status); a generative one the share of its
samples that progress."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mtlgen.evaluate.cases import SEGMENTATION_KINDS

BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def reliability(rows: Sequence[dict], names: Sequence[str]) -> dict[str, dict]:
    """Per predictor: ``brier``, ``cases`` and ``bins`` (``[low, high]``, ``cases``,
    ``predicted`` mean probability, ``observed`` frequency) over the rows with a true status."""
    out = {}
    for name in names:
        scored = [
            (r["growth_prob"], r["status_true"] == "progressive")
            for r in rows
            if r["predictor"] == name
            and r["kind"] not in SEGMENTATION_KINDS
            and r["status_true"] is not None
            and not math.isnan(r["growth_prob"])
        ]
        if not scored:
            continue
        prob, outcome = (np.asarray(x, float) for x in zip(*scored, strict=True))
        edges = np.asarray(BINS)
        index = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, len(edges) - 2)
        bins = []
        for b in range(len(edges) - 1):
            chosen = index == b
            if chosen.any():
                bins.append(
                    {
                        "low": float(edges[b]),
                        "high": float(edges[b + 1]),
                        "cases": int(chosen.sum()),
                        "predicted": float(prob[chosen].mean()),
                        "observed": float(outcome[chosen].mean()),
                    }
                )
        brier = float(np.mean((prob - outcome) ** 2))
        out[name] = {"brier": brier, "cases": len(prob), "bins": bins}
    return out
