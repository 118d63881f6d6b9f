"""Early stopping on validation: the one rule every training loop of mtlgen follows."""

from __future__ import annotations

from typing import Any


def record_validation(counters: dict[str, Any], loss: float, min_improvement: float) -> None:
    """Count an epoch's validation ``loss`` in ``counters`` (``bad_epochs``, ``bar``): progress
    is a loss below the bar, the best loss since the last progress less ``min_improvement`` of
    it (an ever smaller gain does not keep training going); any other epoch is a bad one.
    Training stops after ``train.patience`` bad epochs in a row."""
    if loss < counters["bar"]:
        counters.update(bad_epochs=0, bar=loss * (1.0 - min_improvement))
    else:
        counters["bad_epochs"] += 1
