"""Evaluate predictors (models and baselines) side by side on the test patients' cases.

Every predictor's volume interval is its checkpoint's own (``calibration.json``, as ``mtlgen
predict`` answers) or else calibrated on the validation patients' cases first
(``mtlgen.evaluate.calibration``); then each test case (``mtlgen.evaluate.cases``) is answered by
every predictor and scored (``mtlgen.evaluate.scores``), and the rows are aggregated
(``mtlgen.evaluate.aggregate``). Outputs in ``out_dir``: ``metrics.json`` (per predictor, per case
kind, per metric: mean, std, n; the same per true progression status under ``by_status`` and per
number of context visits under ``by_context``; the calibrations under ``calibration``),
``cases.tsv`` (one row per case and predictor) and the report (``summary.md``, ``summary.png``,
``montage.png``; see ``mtlgen.evaluate.report``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from mtlgen.config import EvaluateConfig, ProgressionConfig
from mtlgen.data.splits import Split
from mtlgen.evaluate.aggregate import (
    aggregate,
    aggregate_by_context,
    aggregate_by_status,
    seed_groups,
)
from mtlgen.evaluate.calibration import calibrate_volumes
from mtlgen.evaluate.cases import (
    KINDS,
    CaseTruth,
    answers,
    case_specs,
    case_truth,
    loaded_cases,
    select_series,
    select_test_series,
)
from mtlgen.evaluate.reliability import reliability
from mtlgen.evaluate.scores import (
    METRICS,
    case_metrics,
    check_prediction,
    growth_probability,
    interval_row,
)
from mtlgen.ids import check_token
from mtlgen.inference.intervals import VolumeCalibration
from mtlgen.inference.prediction import Prediction, Predictor
from mtlgen.io.atomic import write_text_atomic
from mtlgen.io.series import PatientSeries

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Everything ``evaluate`` measured: aggregates, per-case rows and the montage case."""

    metrics: dict
    rows: list[dict]
    montage: tuple[CaseTruth, dict[str, Prediction]] | None


def _check_settings(predictors: Sequence[Predictor], cfg: EvaluateConfig) -> list[str]:
    """The predictors' names (plain tokens, unique); fails on an unknown primary metric."""
    names = [check_token(p.name, "predictor name") for p in predictors]
    if len(set(names)) != len(names):
        raise ValueError(f"predictor names must be unique, got {names}")
    for field in ("primary_metrics", "generative_metrics"):
        unknown = [
            m.metric for m in getattr(cfg, field) if m.metric.split(".", 1)[1] not in METRICS
        ]
        if unknown:
            raise ValueError(f"evaluate.{field}: unknown {unknown}; expected {list(METRICS)}")
    return names


def _case_rows(
    truth: CaseTruth,
    predictors: Sequence[Predictor],
    calibrations: dict[str, VolumeCalibration],
) -> tuple[list[dict], dict[str, Prediction]]:
    """Every answering predictor's prediction of one case and its scored row."""
    rows, predictions = [], {}
    for predictor in predictors:
        if not answers(predictor, truth.kind):
            continue
        pred = predictor.predict(truth.context, truth.target.days)
        check_prediction(pred, truth, predictor.name)
        predictions[predictor.name] = pred
        rows.append(
            {
                "case": truth.case_id,
                "patient": truth.patient,
                "kind": truth.kind,
                "target_days": truth.target.days,
                "context_visits": len(truth.context),
                "predictor": predictor.name,
                "status_true": truth.status,
                "status_pred": pred.status,
                "volume_true_ml": truth.volume_ml,
                "volume_pred_ml": pred.core_volume_ml,
                "growth_prob": growth_probability(pred),
                **case_metrics(pred, truth),
                **interval_row(calibrations.get(predictor.name), truth, pred),
            }
        )
    return rows, predictions


def _calibrations(
    predictors: Sequence[Predictor],
    val_series: Sequence[PatientSeries],
    progression: ProgressionConfig,
    max_context: int,
    reconstruction: bool,
    progress: bool,
) -> dict[str, VolumeCalibration]:
    """Each predictor's volume intervals: a checkpoint's own (what ``mtlgen predict``
    answers), else calibrated on the validation patients."""
    own = {p.name: c for p in predictors if (c := _own_calibration(p)) is not None}
    rest = [p for p in predictors if p.name not in own]
    if not rest:
        return own
    if not val_series:
        log.warning("the split has no validation patients: no calibrated volume intervals")
        return own
    fitted = calibrate_volumes(rest, val_series, progression, max_context, reconstruction, progress)
    return {**own, **fitted}


def _own_calibration(predictor: Predictor) -> VolumeCalibration | None:
    """The calibration a loaded checkpoint (or a generator's base) carries, if any."""
    return getattr(getattr(predictor, "point_forecast", predictor), "calibration", None)


def evaluate_predictors(
    series: Sequence[PatientSeries],
    split: Split,
    predictors: Sequence[Predictor],
    cfg: EvaluateConfig,
    progression: ProgressionConfig,
    max_context: int,
    reconstruction: bool = True,
    progress: bool = True,
) -> Evaluation:
    """Run every predictor on every test case and aggregate per predictor and case kind.

    Cases are ``enumerate_samples(series, max_context, reconstruction)`` of the split's test
    patients: use the training data settings (``data.max_context``, ``data.reconstruction``).
    """
    names = _check_settings(predictors, cfg)
    chosen = select_test_series(series, split)
    calibration_series = select_series(series, split.val, "validation")
    calibrations = _calibrations(
        predictors, calibration_series, progression, max_context, reconstruction, progress
    )
    n_cases = sum(len(case_specs(s, max_context, reconstruction)) for s in chosen)
    counts = dict.fromkeys(KINDS, 0)
    rows: list[dict] = []
    montage, montage_size = None, -1
    bar = tqdm(total=n_cases, desc="evaluating cases", unit="case", disable=not progress)
    with bar:
        for patient, kind, context, target in loaded_cases(chosen, max_context, reconstruction):
            truth = case_truth(patient, kind, context, target, cfg, progression)
            counts[truth.kind] += 1
            case_rows, predictions = _case_rows(truth, predictors, calibrations)
            rows += case_rows
            size = int(truth.change.sum()) if truth.change is not None else 0
            if truth.kind == "future" and size > montage_size:
                montage, montage_size = (truth, predictions), size
            bar.update()
    meta = {
        "test_patients": [s.patient for s in chosen],
        "split_seed": split.seed,
        "split_sha256": split.sha256(),
        "cases": counts,
        "predictors": names,
        "max_context": max_context,
        "reconstruction": reconstruction,
        "directions": METRICS,
        "interval_level": progression.interval_level,
        "calibration_patients": [s.patient for s in calibration_series],
        "primary_metrics": [m.model_dump() for m in cfg.primary_metrics],
        "fallbacks": {p.name: p.fallbacks for p in predictors if getattr(p, "fallbacks", None)},
        "settings": cfg.model_dump(mode="json", exclude={"checkpoints", "out_dir"}),
    }
    results = aggregate(rows, names)
    metrics = {
        "meta": meta,
        "results": results,
        "by_status": aggregate_by_status(rows, names),
        "by_context": aggregate_by_context(rows, names),
        "calibration": {name: c.to_dict() for name, c in calibrations.items()},
        "reliability": reliability(rows, names),
        "seed_groups": seed_groups(results),
    }
    return Evaluation(metrics, rows, montage)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_metrics(evaluation: Evaluation, out_dir: Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` (non-finite values as null) and ``cases.tsv`` atomically."""
    out_dir = Path(out_dir)
    metrics_path = write_text_atomic(
        out_dir / "metrics.json",
        json.dumps(_json_safe(evaluation.metrics), indent=2, sort_keys=True) + "\n",
    )
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=list(evaluation.rows[0]), delimiter="\t", lineterminator="\n"
    )
    writer.writeheader()
    for row in evaluation.rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return metrics_path, write_text_atomic(out_dir / "cases.tsv", buf.getvalue())


def read_cases(path: Path) -> list[dict[str, str | float | None]]:
    """The rows of a ``cases.tsv`` that ``write_metrics`` wrote: numbers as floats, empty
    cells as ``None``, text (ids, kinds, statuses) as is."""

    def value(text: str) -> str | float | None:
        if text == "":
            return None
        try:
            return float(text)
        except ValueError:
            return text

    with open(path, newline="") as fh:
        return [
            {k: value(v) if k not in ("case", "patient") else v for k, v in row.items()}
            for row in csv.DictReader(fh, delimiter="\t")
        ]
