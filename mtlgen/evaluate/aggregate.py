"""Aggregation of per-case rows: per predictor and case kind, per true status, per number of
context visits, and over seeds of one model; the primary metrics a promotion compares."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

from mtlgen.evaluate.cases import KINDS
from mtlgen.evaluate.metrics import status_scores
from mtlgen.evaluate.scores import CASE_METRICS, METRICS
from mtlgen.progression import STATUSES


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """mean, std (population) and n over the defined values (NaN skipped; inf kept)."""
    kept = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if kept.size == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = float(np.mean(kept))
    std = float(np.std(kept)) if np.all(np.isfinite(kept)) else None
    return {"mean": mean if math.isfinite(mean) else None, "std": std, "n": int(kept.size)}


def aggregate(rows: Sequence[dict], names: Sequence[str]) -> dict:
    """``{predictor: {kind: {metric: {mean, std, n}}}}`` over the per-case ``rows``."""
    results: dict = {}
    for name in names:
        for kind in KINDS:
            mine = [r for r in rows if r["predictor"] == name and r["kind"] == kind]
            if not mine:
                continue
            block = {m: summary([r[m] for r in mine]) for m in CASE_METRICS}
            scored = [r for r in mine if r["status_true"] is not None]
            acc, f1 = status_scores(
                [r["status_true"] for r in scored], [r["status_pred"] for r in scored]
            )
            for metric, value in (("status_accuracy", acc), ("status_macro_f1", f1)):
                defined = not math.isnan(value)
                block[metric] = {"mean": value if defined else None, "std": None, "n": len(scored)}
            results.setdefault(name, {})[kind] = {m: block[m] for m in METRICS}
    return results


def _aggregate_by(rows: Sequence[dict], names: Sequence[str], key: str, values) -> dict:
    """``{predictor: {kind: {value: {metric: {mean, std, n}}}}}``: ``aggregate`` over the cases
    whose ``key`` is each of ``values`` (in that order; the value as a string key)."""
    results: dict = {}
    for value in values:
        group = aggregate([r for r in rows if r[key] == value], names)
        for name, kinds in group.items():
            for kind, block in kinds.items():
                results.setdefault(name, {}).setdefault(kind, {})[str(value)] = block
    return results


def aggregate_by_status(rows: Sequence[dict], names: Sequence[str]) -> dict:
    """``aggregate`` over the cases of each true status (cases without one are left out). A
    lesion that did not change makes a changing region of boundary voxels only, a growing one
    of new lesion: the two read differently. Within a group ``status_accuracy`` is the fraction
    of its cases given their true status; macro-F1 over one true class adds nothing and is
    dropped."""
    results = _aggregate_by(rows, names, "status_true", STATUSES)
    for kinds in results.values():
        for groups in kinds.values():
            for block in groups.values():
                del block["status_macro_f1"]
    return results


def aggregate_by_context(rows: Sequence[dict], names: Sequence[str]) -> dict:
    """``aggregate`` over the cases with each number of context visits (a string key). A
    forecast from a single visit has no trajectory to extrapolate; from two or more it has: the
    two read differently."""
    return _aggregate_by(rows, names, "context_visits", sorted({r["context_visits"] for r in rows}))


_SEEDED = re.compile(r"^(?P<group>.+)_seed(?P<seed>\d+)$")


def seed_groups(results: dict) -> dict:
    """Predictors named ``<group>_seed<N>`` (the same model trained with N different seeds),
    summarised over seeds: ``{group: {kind: {metric: {mean, std, n}}}}`` where ``mean`` and
    ``std`` are over the seeds' case means and ``n`` counts seeds. Groups need >= 2 seeds."""
    members: dict[str, list[str]] = {}
    for name in results:
        match = _SEEDED.match(name)
        if match:
            members.setdefault(match["group"], []).append(name)
    groups: dict = {}
    for group, names in sorted(members.items()):
        if len(names) < 2:
            continue
        for kind in KINDS:
            blocks = [results[n][kind] for n in names if kind in results[n]]
            if not blocks:
                continue
            groups.setdefault(group, {})[kind] = {
                metric: summary(
                    [
                        float("nan") if b[metric]["mean"] is None else b[metric]["mean"]
                        for b in blocks
                    ]
                )
                for metric in METRICS
            }
    return groups


def primary_scores(
    metrics: dict, predictor: str, primary: Iterable[str]
) -> dict[str, float | None]:
    """The ``primary`` metrics' means for ``predictor`` (``kind.metric`` -> value)."""
    scores = {}
    for name in primary:
        kind, metric = name.split(".", 1)
        entry = metrics["results"].get(predictor, {}).get(kind, {}).get(metric)
        scores[name] = None if entry is None else entry["mean"]
    return scores
