"""The promotion rule: a candidate becomes champion only if it is no worse than the current
champion on every primary metric, measured on the same test split. A champion that this version
of mtlgen can no longer load (the network changed since it was trained) cannot serve
predictions: the candidate replaces it, and the reason says so.

Evaluation results are stored on each model version as tags (``eval.<metric>``,
``eval.split_sha256``) so that the champion's numbers are there to compare against later. Every
decision is logged: as tags on the candidate version and as a ``promote`` run with the numbers of
both sides and ``promotion.json``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from mtlgen.config import Params, TrackingConfig
from mtlgen.track.logger import flatten
from mtlgen.track.run import tracked_run
from mtlgen.track.versions import CANDIDATE, CHAMPION, loading_problem, resolve_version

log = logging.getLogger(__name__)

Direction = Literal["max", "min"]
SPLIT_TAG = "eval.split_sha256"


@dataclass(frozen=True)
class Comparison:
    metric: str
    direction: Direction
    candidate: float
    champion: float | None
    ok: bool


@dataclass(frozen=True)
class Decision:
    model_name: str
    candidate_version: str
    champion_version: str | None  # the champion before this decision
    promoted: bool
    reason: str
    split_sha256: str
    comparisons: tuple[Comparison, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def primary_values(
    metrics: Mapping[str, Any], primary: Mapping[str, Direction], source: str
) -> dict[str, float]:
    """The primary metrics out of (nested) ``metrics``; missing or non-finite ones are an error."""
    flat = flatten(metrics)
    values = {}
    for name in primary:
        if name not in flat:
            raise KeyError(f"{source}: primary metric {name!r} missing; found {sorted(flat)}")
        try:
            value = float(flat[name])
        except (TypeError, ValueError):
            raise ValueError(
                f"{source}: metric {name!r} is not a number ({flat[name]!r})"
            ) from None
        if not math.isfinite(value):
            raise ValueError(f"{source}: metric {name!r} is {value}, expected a finite number")
        values[name] = value
    return values


def compare(
    candidate: Mapping[str, float],
    champion: Mapping[str, float],
    primary: Mapping[str, Direction],
) -> tuple[Comparison, ...]:
    """Per primary metric: is the candidate no worse than the champion (ties pass)?"""
    rows = []
    for name, direction in primary.items():
        cand, champ = candidate[name], champion.get(name)
        better_or_equal = champ is not None and (
            cand >= champ if direction == "max" else cand <= champ
        )
        rows.append(Comparison(name, direction, cand, champ, better_or_equal))
    return tuple(rows)


def _decide(
    cfg: TrackingConfig,
    client: Any,
    name: str,
    version: str,
    values: dict[str, float],
    split_sha256: str,
    primary: Mapping[str, Direction],
) -> tuple[str | None, bool, str, tuple[Comparison, ...]]:
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    no_champion = tuple(Comparison(m, d, values[m], None, True) for m, d in primary.items())
    if champion is None:
        return None, True, "no champion yet", no_champion
    champion_version = str(champion.version)
    if champion_version == version:
        return champion_version, True, "already the champion", no_champion
    problem = loading_problem(cfg, champion_version, name)
    if problem is not None:
        reason = f"champion v{champion_version} no longer loads, so it is replaced: {problem}"
        return champion_version, True, reason, no_champion
    tags = champion.tags
    if tags.get(SPLIT_TAG) != split_sha256:
        reason = (
            f"champion v{champion_version} was evaluated on another test split "
            f"({tags.get(SPLIT_TAG, 'none')[:12]} vs {split_sha256[:12]}); re-evaluate it first"
        )
        return champion_version, False, reason, ()
    champ_values = {m: float(tags[f"eval.{m}"]) for m in primary if f"eval.{m}" in tags}
    rows = compare(values, champ_values, primary)
    worse = [r.metric for r in rows if not r.ok]
    if worse:
        return champion_version, False, f"worse than champion v{champion_version} on {worse}", rows
    return (
        champion_version,
        True,
        f"no worse than champion v{champion_version} on every primary metric",
        rows,
    )


def promote(
    cfg: TrackingConfig,
    metrics: Mapping[str, Any],
    primary: Mapping[str, Direction],
    split_sha256: str,
    ref: str = CANDIDATE,
    source: str = "metrics",
) -> Decision:
    """Record the evaluation of model version ``ref`` and apply the promotion rule to it."""
    import mlflow

    if not primary:
        raise ValueError("promotion needs at least one primary metric (evaluate section)")
    values = primary_values(metrics, primary, source)
    name = cfg.model_name
    version = resolve_version(cfg, ref)
    client = mlflow.MlflowClient()
    for metric, value in values.items():
        client.set_model_version_tag(name, version, f"eval.{metric}", repr(value))
    client.set_model_version_tag(name, version, SPLIT_TAG, split_sha256)
    before, promoted, reason, rows = _decide(
        cfg, client, name, version, values, split_sha256, primary
    )
    decision = Decision(name, version, before, promoted, reason, split_sha256, rows)
    with tracked_run(cfg, f"promote-{name}-v{version}", {"mtlgen.stage": "promote"}) as run:
        run.log_params(
            {
                "model": name,
                "candidate_version": version,
                "champion_version": str(before),
                "split_sha256": split_sha256,
            }
        )
        run.log_metrics({f"candidate.{m}": v for m, v in values.items()})
        run.log_metrics(
            {f"champion.{r.metric}": r.champion for r in rows if r.champion is not None}
        )
        run.log_dict(decision.to_dict(), "promotion.json")
        run.set_tags(
            {
                "promotion.decision": "promoted" if promoted else "rejected",
                "promotion.reason": reason,
            }
        )
    client.set_model_version_tag(
        name, version, "promotion.decision", "promoted" if promoted else "rejected"
    )
    client.set_model_version_tag(name, version, "promotion.reason", reason)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    log.info("%s v%s: %s (%s)", name, version, "promoted" if promoted else "not promoted", reason)
    return decision


def promote_evaluated(
    params: Params, evaluation: Mapping[str, Any], predictor: str, ref: str, source: str
) -> Decision:
    """Apply the rule to model version ``ref`` with the primary metrics that ``predictor`` scored
    in ``evaluation`` (a ``metrics.json`` of ``mtlgen evaluate``), on that evaluation's split."""
    from mtlgen.evaluate.aggregate import primary_scores

    primary = {m.metric: m.direction for m in params.evaluate.primary_metrics}
    scores = primary_scores(dict(evaluation), predictor, params.evaluate)
    split_sha = evaluation["meta"]["split_sha256"]
    return promote(params.tracking, scores, primary, split_sha, ref, source=source)
