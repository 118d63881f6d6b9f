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

from mtlgen.config import TrackingConfig
from mtlgen.io.atomic import write_text_atomic
from mtlgen.io.series import PatientSeries

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
    current: set[VisitKey],
    trained: set[VisitKey] | None,
    threshold: int,
    champion_problem: str | None = None,
) -> RetrainDecision:
    """Retrain if there is no champion (``trained`` is None), if this version of mtlgen cannot
    load it (``champion_problem``: why, e.g. the network changed since it was trained), or if
    ``threshold`` or more visits in ``current`` were not in the champion's training set."""
    if threshold < 1:
        raise ValueError(f"retrain threshold must be >= 1, got {threshold}")
    if not current:
        return RetrainDecision(False, 0, threshold, "no registered visits to train on")
    if trained is None:
        return RetrainDecision(True, len(current), threshold, "no champion yet")
    new = len(current - trained)
    if champion_problem is not None:
        return RetrainDecision(
            True, new, threshold, f"the champion cannot be loaded: {champion_problem}"
        )
    if new >= threshold:
        return RetrainDecision(True, new, threshold, f"{new} new visits >= {threshold}")
    return RetrainDecision(False, new, threshold, f"{new} new visits < {threshold}")


VISITS_ARTIFACT = "train_visits.json"


def record_training_visits(tracking: TrackingConfig, run_id: str, keys: set[VisitKey]) -> None:
    """Attach the visits a model was trained on to its training run (``train_visits.json``)."""
    import mlflow

    from mtlgen.track.run import connect

    connect(tracking)
    mlflow.MlflowClient().log_text(run_id, json.dumps(sorted(keys)) + "\n", VISITS_ARTIFACT)


def champion_training_visits(tracking: TrackingConfig) -> set[VisitKey] | None:
    """The visits the current champion was trained on; None if there is no champion, an empty set
    if its training run recorded none (then every registered visit counts as new)."""
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    from mtlgen.track.run import connect
    from mtlgen.track.versions import CHAMPION

    connect(tracking)
    client = mlflow.MlflowClient()
    try:
        champion = client.get_model_version_by_alias(tracking.model_name, CHAMPION)
    except MlflowException:
        return None
    with tempfile.TemporaryDirectory(prefix="mtlgen-visits-") as tmp:
        try:
            path = client.download_artifacts(champion.run_id, VISITS_ARTIFACT, tmp)
        except (MlflowException, OSError):
            return set()
        return load_visit_keys(path)
