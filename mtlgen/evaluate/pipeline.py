"""``mtlgen evaluate`` as one library call: registry series + split + checkpoints -> report.

Reads the registered series (``registry.url``), the split (``data.split_file``), builds the
baselines (``evaluate.baselines``) and loads every configured checkpoint
(``evaluate.checkpoints``: name -> folder) through ``mtlgen.models.predictor.load_predictor``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mtlgen.config import Params
from mtlgen.data.splits import Split
from mtlgen.evaluate.predictor import Prediction, Predictor
from mtlgen.io.series import PatientSeries, VisitArrays

log = logging.getLogger(__name__)


@dataclass
class NamedPredictor:
    """A loaded model under the name it was configured with (the name in metrics.json)."""

    name: str
    model: Predictor

    @property
    def segments(self) -> bool:
        """Whether the model answers ``current`` (segmentation) cases."""
        return getattr(self.model, "segments", True)

    def predict(self, context: Sequence[VisitArrays], target_days: float) -> Prediction:
        return self.model.predict(context, target_days)


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


def load_predictors(checkpoints: Mapping[str, Path], device: str = "auto") -> list[Predictor]:
    """Load each configured checkpoint (name -> folder) under its configured name, on ``device``
    (``auto``: CUDA when present)."""
    if not checkpoints:
        return []
    import torch

    from mtlgen.models.predictor import load_predictor

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ValueError("evaluate.device: cuda requested but no CUDA device is available")
    loaded = []
    for name, directory in checkpoints.items():
        log.info("loading checkpoint %s from %s on %s", name, directory, device)
        loaded.append(NamedPredictor(name, load_predictor(directory, device=device)))
    return loaded


def calibrate_checkpoint(
    params: Params, series: Sequence[PatientSeries], split: Split, checkpoint_dir: Path
) -> Path | None:
    """Calibrate a trained 3-D checkpoint's volume intervals on the split's validation patients
    and save them beside its weights (``calibration.json``), so that the registered model
    carries them into ``mtlgen predict``. None (nothing written) without validation patients
    or for a 2-D model."""
    from mtlgen.evaluate.run import calibrate_volumes, select_series
    from mtlgen.models.predictor import load_predictor

    val_series = select_series(series, split.val, "validation")
    if not val_series:
        log.warning("no validation patients: %s gets no volume intervals", checkpoint_dir)
        return None
    try:
        predictor = load_predictor(checkpoint_dir)
    except ValueError as exc:  # a 2-D model answers slices, not the volumes a case needs
        log.warning("%s: no volume intervals (%s)", checkpoint_dir, exc)
        return None
    calibration = calibrate_volumes(
        [predictor],
        val_series,
        params.progression,
        params.data.max_context,
        params.data.reconstruction,
    )[predictor.name]
    path = calibration.save(checkpoint_dir)
    log.info(
        "volume intervals at level %g calibrated on %d validation cases -> %s",
        calibration.level,
        calibration.cases.get("all", 0),
        path,
    )
    return path


@dataclass(frozen=True)
class EvaluationOutputs:
    metrics: dict
    paths: list[Path]


def evaluate_from_params(
    params: Params, out_dir: Path | None = None, progress: bool = True
) -> EvaluationOutputs:
    """Evaluate baselines and configured checkpoints on the split's test patients; write
    ``metrics.json``, ``cases.tsv``, ``summary.md``, ``summary.png`` and ``montage.png``."""
    from mtlgen.data.splits import load_split
    from mtlgen.evaluate.baselines import make_baseline
    from mtlgen.evaluate.report import write_report
    from mtlgen.evaluate.run import evaluate_predictors, write_metrics
    from mtlgen.registry.series import load_series

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
