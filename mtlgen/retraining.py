"""When to retrain: only once enough new visits have arrived since the champion was trained.

A visit is identified by ``(patient pseudonym, visit key)``. The champion's training set is the set
of visit keys it was trained on (recorded at training time, see ``flows/train.py``); a visit is
*new* if the registry holds it and the champion never saw it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mtlgen.data.series import PatientSeries
from mtlgen.io.atomic import write_text_atomic

VisitKey = tuple[str, str]


def visit_keys(series: Iterable[PatientSeries]) -> set[VisitKey]:
    """Every ``(patient, visit)`` pair in ``series``."""
    return {(p.patient, v.visit) for p in series for v in p.visits}


def save_visit_keys(keys: Iterable[VisitKey], path: Path | str) -> Path:
    """Write ``keys`` as sorted JSON ``[[patient, visit], ...]`` (atomic)."""
    return write_text_atomic(path, json.dumps(sorted(keys), indent=0) + "\n")


def load_visit_keys(path: Path | str) -> set[VisitKey]:
    """Read what ``save_visit_keys`` wrote; a malformed file is an error naming it."""
    try:
        rows = json.loads(Path(path).read_text())
        if not isinstance(rows, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r) for r in rows
        ):
            raise ValueError("expected a JSON list of [patient, visit] string pairs")
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not a visit list ({exc})") from None
    return {(p, v) for p, v in rows}


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    new_visits: int
    threshold: int
    reason: str


def retrain_decision(
    current: set[VisitKey], trained: set[VisitKey] | None, threshold: int
) -> RetrainDecision:
    """Retrain if there is no champion (``trained`` is None) or ``threshold`` or more visits in
    ``current`` were not in the champion's training set."""
    if threshold < 1:
        raise ValueError(f"retrain threshold must be >= 1, got {threshold}")
    if not current:
        return RetrainDecision(False, 0, threshold, "no registered visits to train on")
    if trained is None:
        return RetrainDecision(True, len(current), threshold, "no champion yet")
    new = len(current - trained)
    if new >= threshold:
        return RetrainDecision(True, new, threshold, f"{new} new visits >= {threshold}")
    return RetrainDecision(False, new, threshold, f"{new} new visits < {threshold}")
