"""The promotion rule: a candidate becomes champion only if, on the same test split, it is
non-inferior to the current champion on every primary metric and better on at least one.

Each metric's difference is judged by a paired bootstrap over the test cases both models were
scored on (``mtlgen.evaluate.paired``): non-inferior when the lower end of the interval of the
candidate's improvement lies above minus the metric's margin, better when it lies above the
metric's ``min_gain`` (0 by default; a generator retrained with the same settings differs from
its champion systematically but by a negligible amount, and that must not count as better).
The generator is judged on its own outputs (``evaluate.generative_metrics``: the CRPS of its
samples near the lesion and the Brier score of its growth probability).
Two models of equal quality therefore never replace each other back and forth, and a difference
of noise size decides nothing. Without the champion's per-case scores (a version recorded before
they were kept) the means are compared within the margins, and the reason says so.

A champion that this version of mtlgen can no longer load (the network changed since it was
trained) cannot serve predictions: the candidate replaces it, and the reason says so.

Evaluation results are stored on each model version: the means as tags (``eval.<metric>``,
``eval.split_sha256``) and the per-case scores as the ``eval_cases.json`` artifact of its
``promote`` run (tag ``eval.cases_run``), so that the champion's numbers are there to compare
against later. Every decision is logged: as tags on the candidate version and as a ``promote``
run with the numbers of both sides and ``promotion.json``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mtlgen.config import Params, TrackingConfig
from mtlgen.evaluate.paired import paired_bootstrap
from mtlgen.track.logger import flatten
from mtlgen.track.run import tracked_run
from mtlgen.track.versions import CANDIDATE, CHAMPION, loading_problem, resolve_version

log = logging.getLogger(__name__)

Direction = Literal["max", "min"]
SPLIT_TAG = "eval.split_sha256"
CASES_TAG = "eval.cases_run"
CASES_ARTIFACT = "eval_cases.json"


@dataclass(frozen=True)
class Rule:
    """What "better" means: ``primary`` metric -> direction, each metric's non-inferiority
    ``margins`` and least improvement that counts, ``min_gains`` (metric units; 0 if absent),
    and the bootstrap's ``confidence`` and ``resamples``."""

    primary: Mapping[str, Direction]
    margins: Mapping[str, float] = field(default_factory=dict)
    confidence: float = 0.95
    resamples: int = 2000
    min_gains: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Params, generator: bool = False) -> Rule:
        """The multi-task models' rule (``evaluate.primary_metrics``), or the generator's
        (``evaluate.generative_metrics``)."""
        cfg = params.evaluate
        metrics = cfg.generative_metrics if generator else cfg.primary_metrics
        return cls(
            {m.metric: m.direction for m in metrics},
            {m.metric: m.margin for m in metrics},
            cfg.promotion_confidence,
            cfg.promotion_resamples,
            {m.metric: m.min_gain for m in metrics},
        )


@dataclass(frozen=True)
class Comparison:
    """One metric: both sides' means, the candidate's improvement (positive = better) with its
    paired-bootstrap interval (``None`` when only means were compared), the margin, and the
    verdicts: ``ok`` non-inferior, ``better`` better beyond noise."""

    metric: str
    direction: Direction
    candidate: float
    champion: float | None
    ok: bool
    better: bool = False
    margin: float = 0.0
    improvement: float | None = None
    low: float | None = None
    high: float | None = None
    cases: int = 0


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


def kind_and_field(metric: str) -> tuple[str, str]:
    """``future.dice_lesion`` -> (``future``, ``dice_lesion``): the case kind a primary metric
    is scored on and its per-case field (a name without a kind is both)."""
    kind, _, name = metric.partition(".")
    return kind, name or kind


def case_scores(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[str, Mapping[str, Any]]:
    """The rows of ``metric``'s case kind, by case id."""
    kind = kind_and_field(metric)[0]
    return {str(r["case"]): r for r in rows if r.get("kind") == kind}


def compare(
    candidate: Mapping[str, float],
    champion: Mapping[str, float],
    rule: Rule,
    candidate_cases: Sequence[Mapping[str, Any]] = (),
    champion_cases: Sequence[Mapping[str, Any]] = (),
) -> tuple[Comparison, ...]:
    """Per primary metric: is the candidate non-inferior to the champion, and better? Paired
    bootstrap when both sides' per-case scores are given, else the means within the margin."""
    rows = []
    for name, direction in rule.primary.items():
        cand, champ = candidate[name], champion.get(name)
        margin = float(rule.margins.get(name, 0.0))
        gain = float(rule.min_gains.get(name, 0.0))
        if champ is None:
            rows.append(Comparison(name, direction, cand, None, False, margin=margin))
            continue
        mine, theirs = case_scores(candidate_cases, name), case_scores(champion_cases, name)
        if set(mine) & set(theirs):
            diff = paired_bootstrap(
                mine,
                theirs,
                kind_and_field(name)[1],
                direction,
                rule.confidence,
                rule.resamples,
            )
            point, low, high, n = diff.improvement, diff.low, diff.high, diff.n
            ok, better = low >= -margin, low > gain
        else:
            point = cand - champ if direction == "max" else champ - cand
            low = high = None
            n = 0
            ok, better = point >= -margin, point > max(margin, gain)
        rows.append(
            Comparison(name, direction, cand, champ, ok, better, margin, point, low, high, n)
        )
    return tuple(rows)


def _champion_cases(tags: Mapping[str, str]) -> list[dict[str, Any]]:
    """The champion's recorded per-case scores ([] for a version recorded before they were)."""
    import mlflow

    run_id = tags.get(CASES_TAG)
    if not run_id:
        return []
    return list(mlflow.artifacts.load_dict(f"runs:/{run_id}/{CASES_ARTIFACT}")["cases"])


def _verdict(version: str, rows: tuple[Comparison, ...], paired: bool) -> tuple[bool, str]:
    how = "paired bootstrap" if paired else "means only: the champion has no per-case scores"
    worse = [r.metric for r in rows if not r.ok]
    if worse:
        return False, f"worse than champion v{version} beyond the margin on {worse} ({how})"
    better = [r.metric for r in rows if r.better]
    if not better:
        return False, (
            f"non-inferior to champion v{version} but better on no primary metric beyond "
            f"noise ({how})"
        )
    return True, f"non-inferior to champion v{version} and better on {better} ({how})"


def _decide(
    cfg: TrackingConfig,
    client: Any,
    name: str,
    version: str,
    values: dict[str, float],
    split_sha256: str,
    rule: Rule,
    cases: Sequence[Mapping[str, Any]],
) -> tuple[str | None, bool, str, tuple[Comparison, ...]]:
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    no_champion = tuple(
        Comparison(m, d, values[m], None, True, margin=rule.margins.get(m, 0.0))
        for m, d in rule.primary.items()
    )
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
    champ_values = {m: float(tags[f"eval.{m}"]) for m in rule.primary if f"eval.{m}" in tags}
    champ_cases = _champion_cases(tags)
    rows = compare(values, champ_values, rule, cases, champ_cases)
    promoted, reason = _verdict(champion_version, rows, any(r.low is not None for r in rows))
    return champion_version, promoted, reason, rows


def _kept_cases(cases: Sequence[Mapping[str, Any]], rule: Rule) -> list[dict[str, Any]]:
    """The per-case fields the rule reads: case id, kind, status and the primary metrics."""
    kinds = {kind_and_field(m)[0] for m in rule.primary}
    fields = ["case", "kind", "status_true", "status_pred"]
    fields += sorted({kind_and_field(m)[1] for m in rule.primary} - set(fields))
    return [{f: r.get(f) for f in fields} for r in cases if r.get("kind") in kinds]


def _log_decision(
    cfg: TrackingConfig,
    decision: Decision,
    values: Mapping[str, float],
    rule: Rule,
    kept: Sequence[Mapping[str, Any]],
) -> str:
    """The ``promote-<name>-v<N>`` run: both sides' numbers, each difference's interval, the
    decision and the candidate's per-case scores; returns its id."""
    name, version, rows = decision.model_name, decision.candidate_version, decision.comparisons
    with tracked_run(cfg, f"promote-{name}-v{version}", {"mtlgen.stage": "promote"}) as run:
        run.log_params(
            {
                "model": name,
                "candidate_version": version,
                "champion_version": str(decision.champion_version),
                "split_sha256": decision.split_sha256,
                "confidence": rule.confidence,
            }
        )
        run.log_metrics({f"candidate.{m}": v for m, v in values.items()})
        run.log_metrics(
            {f"champion.{r.metric}": r.champion for r in rows if r.champion is not None}
        )
        run.log_metrics(
            {
                f"improvement.{r.metric}.{end}": getattr(r, end)
                for r in rows
                for end in ("low", "high")
                if getattr(r, end) is not None
            }
        )
        run.log_dict(decision.to_dict(), "promotion.json")
        if kept:
            run.log_dict({"cases": kept}, CASES_ARTIFACT)
        run.set_tags(
            {
                "promotion.decision": "promoted" if decision.promoted else "rejected",
                "promotion.reason": decision.reason,
            }
        )
        return run.run_id


def promote(
    cfg: TrackingConfig,
    metrics: Mapping[str, Any],
    rule: Rule,
    split_sha256: str,
    ref: str = CANDIDATE,
    source: str = "metrics",
    cases: Sequence[Mapping[str, Any]] = (),
) -> Decision:
    """Record the evaluation of model version ``ref`` (means ``metrics`` and, for the paired
    comparison, its per-case rows ``cases`` of ``cases.tsv``) and apply the rule to it."""
    import mlflow

    if not rule.primary:
        raise ValueError("promotion needs at least one primary metric (evaluate section)")
    values = primary_values(metrics, rule.primary, source)
    kept = _kept_cases(cases, rule)
    name = cfg.model_name
    version = resolve_version(cfg, ref)
    client = mlflow.MlflowClient()
    for metric, value in values.items():
        client.set_model_version_tag(name, version, f"eval.{metric}", repr(value))
    client.set_model_version_tag(name, version, SPLIT_TAG, split_sha256)
    before, promoted, reason, rows = _decide(
        cfg, client, name, version, values, split_sha256, rule, kept
    )
    decision = Decision(name, version, before, promoted, reason, split_sha256, rows)
    run_id = _log_decision(cfg, decision, values, rule, kept)
    if kept:
        client.set_model_version_tag(name, version, CASES_TAG, run_id)
    client.set_model_version_tag(
        name, version, "promotion.decision", "promoted" if promoted else "rejected"
    )
    client.set_model_version_tag(name, version, "promotion.reason", reason)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    log.info("%s v%s: %s (%s)", name, version, "promoted" if promoted else "not promoted", reason)
    for r in rows:
        if r.low is not None:
            log.info(
                "  %s: candidate %.4g vs champion %.4g, improvement %.4g [%.4g, %.4g] "
                "(margin %.4g, %d cases)",
                r.metric,
                r.candidate,
                r.champion,
                r.improvement,
                r.low,
                r.high,
                r.margin,
                r.cases,
            )
    return decision


def promote_evaluated(
    params: Params,
    metrics_path: Path,
    predictor: str,
    ref: str,
    model_name: str | None = None,
    generator: bool = False,
) -> Decision:
    """Apply the rule (the ``generator``'s own with that flag) to version ``ref`` of
    ``model_name`` (default ``tracking.model_name``) with what ``predictor`` scored in the
    evaluation at ``metrics_path`` (``metrics.json`` of ``mtlgen evaluate``; its ``cases.tsv``
    beside it gives the per-case scores), on that evaluation's split."""
    from mtlgen.evaluate.aggregate import primary_scores
    from mtlgen.evaluate.run import read_cases

    metrics_path = Path(metrics_path)
    evaluation = json.loads(metrics_path.read_text())
    rule = Rule.from_params(params, generator)
    scores = primary_scores(evaluation, predictor, rule.primary)
    cases = [
        r for r in read_cases(metrics_path.with_name("cases.tsv")) if r["predictor"] == predictor
    ]
    split_sha = evaluation["meta"]["split_sha256"]
    tracking = params.tracking
    if model_name is not None:
        tracking = tracking.model_copy(update={"model_name": model_name})
    return promote(tracking, scores, rule, split_sha, ref, str(metrics_path), cases)
