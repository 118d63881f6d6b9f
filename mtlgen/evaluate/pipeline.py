"""``mtlgen evaluate`` as one library call: registry series + split + checkpoints -> report.

Reads the registered series (``registry.url``), the split (``data.split_file``), builds the
baselines (``evaluate.baselines``) and loads every configured checkpoint
(``evaluate.checkpoints``: name -> folder) through ``mtlgen.inference.model.load_predictor``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mtlgen.config import Params
from mtlgen.data.splits import load_split
from mtlgen.evaluate.report import write_report
from mtlgen.evaluate.run import evaluate_predictors, write_metrics
from mtlgen.inference.baselines import make_baseline
from mtlgen.inference.model import load_predictors
from mtlgen.registry.series import load_series

log = logging.getLogger(__name__)


def check_inputs(params: Params) -> None:
    """Fail before any work when a configured checkpoint folder or the split file is missing,
    naming the setting."""
    checkpoints = params.evaluate.checkpoints
    missing = [f"evaluate.checkpoints.{n}: {d}" for n, d in checkpoints.items() if not d.is_dir()]
    if missing:
        raise FileNotFoundError(
            "checkpoint folder(s) not found (train them first, or remove them from "
            "evaluate.checkpoints):\n  " + "\n  ".join(missing)
        )
    if not params.data.split_file.is_file():
        raise FileNotFoundError(
            f"data.split_file: {params.data.split_file} not found (run `mtlgen split` first)"
        )
    if not params.evaluate.baselines and not checkpoints:
        raise ValueError(
            "nothing to evaluate: evaluate.baselines and evaluate.checkpoints are empty"
        )


@dataclass(frozen=True)
class EvaluationOutputs:
    metrics: dict
    paths: list[Path]


def evaluate_from_params(
    params: Params, out_dir: Path | None = None, progress: bool = True
) -> EvaluationOutputs:
    """Evaluate baselines and configured checkpoints on the split's test patients; write
    ``metrics.json``, ``cases.tsv``, ``summary.md``, ``summary.png`` and ``montage.png``."""
    check_inputs(params)
    cfg = params.evaluate
    out_dir = Path(out_dir or cfg.out_dir)
    prog = params.progression
    predictors = [make_baseline(b, prog.increase, prog.decrease) for b in cfg.baselines]
    predictors += load_predictors(cfg.checkpoints, cfg.device)
    split = load_split(params.data.split_file)
    series = load_series(params.registry.url, params.registry.sqlite_timeout_s)
    log.info(
        "evaluating %s on %d test patients of %s",
        [p.name for p in predictors],
        len(split.test),
        params.data.split_file,
    )
    evaluation = evaluate_predictors(
        series,
        split,
        predictors,
        cfg,
        prog,
        params.data.max_context,
        params.data.reconstruction,
        progress,
    )
    paths = [
        *write_metrics(evaluation, out_dir),
        *write_report(evaluation.metrics, evaluation.montage, out_dir),
    ]
    return EvaluationOutputs(evaluation.metrics, paths)
