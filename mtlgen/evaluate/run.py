"""Evaluate predictors (models and baselines) side by side on the test patients' cases.

Cases come from ``mtlgen.data.samples.enumerate_samples`` (future and reconstruction targets).
Truth that does not depend on the predictor (brain and changing regions, true volume and status)
is computed once per case. Every predictor's volume interval is calibrated on the validation
patients' cases first (``mtlgen.evaluate.intervals``). Outputs in ``out_dir``: ``metrics.json``
(per predictor, per case kind, per metric: mean, std, n; the same per true progression status
under ``by_status`` and per number of context visits under ``by_context``; the calibrations
under ``calibration``),
``cases.tsv`` (one row per case and predictor) and the report
(``summary.md``, ``summary.png``, ``montage.png``; see ``mtlgen.evaluate.report``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mtlgen.config import EvaluateConfig, ProgressionConfig
from mtlgen.data.samples import enumerate_samples
from mtlgen.data.splits import Split
from mtlgen.evaluate.baselines import reference_visit
from mtlgen.evaluate.intervals import VolumeCalibration, VolumeCase, horizon_days, interval_scores
from mtlgen.evaluate.metrics import (
    brain_region,
    changing_region,
    dice,
    hd95,
    label_volume_ml,
    region_mae,
    region_nanmean,
    region_psnr,
    ssim_map,
    status_scores,
    volume_errors,
    voxel_spacing_mm,
)
from mtlgen.evaluate.predictor import Prediction, Predictor
from mtlgen.ids import check_token
from mtlgen.io.atomic import write_text_atomic
from mtlgen.io.series import PatientSeries, VisitArrays, load_visit
from mtlgen.progression import STATUSES, Status, progression_status

log = logging.getLogger(__name__)

# future / reconstruction: ``enumerate_samples``; current: segment an observed visit whose
# label the predictor does not see, given the labels of the visits before it (the first visit
# of a series is segmented from its images alone)
KINDS: tuple[str, ...] = ("future", "reconstruction", "current")
# every metric in metrics.json and whether larger ("max"), smaller ("min") or nearer the
# interval level ("level") is better
METRICS: dict[str, str] = {
    "dice_lesion": "max",
    "dice_core": "max",
    "hd95_lesion_mm": "min",
    "hd95_core_mm": "min",
    "volume_abs_error_ml": "min",
    "volume_rel_error": "min",
    "status_accuracy": "max",
    "status_macro_f1": "max",
    "image_mae_brain": "min",
    "image_psnr_brain": "max",
    "image_ssim_brain": "max",
    "image_mae_change": "min",
    "image_psnr_change": "max",
    "image_ssim_change": "max",
    "volume_interval_coverage": "level",  # best near the interval level, not at an extreme
    "volume_interval_width_ml": "min",
    "volume_interval_score": "min",
}
_CASE_METRICS = [m for m in METRICS if not m.startswith("status_")]


@dataclass
class CaseTruth:
    """What a case's truth says, independent of any predictor."""

    patient: str
    kind: str
    context: tuple[VisitArrays, ...]
    target: VisitArrays
    reference: VisitArrays
    brain: np.ndarray
    change: np.ndarray | None  # None without target and reference labels
    volume_ml: float | None  # None without a target label
    status: Status | None  # None without target and reference labels
    data_range: dict[str, float]  # contrast -> range of the true image inside the brain
    ssim_window: int

    @property
    def case_id(self) -> str:
        context = ",".join(v.visit for v in self.context)
        return f"{self.patient}:{self.kind}:{context}->{self.target.visit}"


def case_truth(
    patient: str,
    kind: str,
    context: Sequence[VisitArrays],
    target: VisitArrays,
    cfg: EvaluateConfig,
    progression: ProgressionConfig,
) -> CaseTruth:
    """Brain and changing regions, true core volume and status of one case."""
    reference = reference_visit(context, target.days)
    brain = np.zeros(next(iter(target.images.values())).shape, bool)
    for image in target.images.values():
        brain |= brain_region(image, cfg.brain_fraction, cfg.brain_sigma_vox)
    data_range = {}
    for contrast, image in target.images.items():
        inside = image[brain]
        data_range[contrast] = float(inside.max() - inside.min()) if inside.size else 0.0
    change = volume = status = None
    if target.label is not None:
        volume = label_volume_ml(target.label, target.affine)
    if volume is not None and reference.label is not None:
        change = changing_region(reference.label, target.label, cfg.changing_dilation_vox) & brain
        ref_ml = label_volume_ml(reference.label, reference.affine)
        status = progression_status(ref_ml, volume, progression.increase, progression.decrease)
    return CaseTruth(
        patient,
        kind,
        tuple(context),
        target,
        reference,
        brain,
        change,
        volume,
        status,
        data_range,
        cfg.ssim_window,
    )


def _check_prediction(pred: Prediction, truth: CaseTruth, who: str) -> None:
    shape = truth.brain.shape
    where = f"predictor {who!r} on case {truth.case_id}"
    if pred.label.shape != shape:
        raise ValueError(f"{where}: label shape {pred.label.shape}, expected {shape}")
    for contrast, image in pred.images.items():
        if image.shape != shape:
            raise ValueError(f"{where}: {contrast} image shape {image.shape}, expected {shape}")
        if not np.isfinite(image).all():
            raise ValueError(f"{where}: {contrast} image has non-finite values")
    if not math.isfinite(pred.core_volume_ml) or pred.core_volume_ml < 0:
        raise ValueError(f"{where}: core volume {pred.core_volume_ml}, expected finite >= 0 mL")


def case_metrics(pred: Prediction, truth: CaseTruth) -> dict[str, float]:
    """Every per-case metric of ``METRICS`` (status is scored over cases, not here).

    Image metrics average over the contrasts present in both prediction and truth; metrics whose
    truth is missing (no label, empty changing region) are NaN. ``current`` cases score the
    segmentation only (mask and volume): their image is given, not predicted.
    """
    out = dict.fromkeys(_CASE_METRICS, float("nan"))
    target = truth.target
    if target.label is not None:
        spacing = voxel_spacing_mm(target.affine)
        for name, pred_mask, true_mask in (
            ("lesion", pred.label > 0, target.label > 0),
            ("core", pred.label == 1, target.label == 1),
        ):
            out[f"dice_{name}"] = dice(pred_mask, true_mask)
            out[f"hd95_{name}_mm"] = hd95(pred_mask, true_mask, spacing)
        out["volume_abs_error_ml"], out["volume_rel_error"] = volume_errors(
            pred.core_volume_ml, truth.volume_ml
        )
    per_contrast: dict[str, list[float]] = {}
    for contrast, true_image in target.images.items():
        if contrast not in pred.images or truth.kind == "current":
            continue
        image, rng = pred.images[contrast], truth.data_range[contrast]
        local_ssim = ssim_map(image, true_image, rng, truth.ssim_window)
        regions = [("brain", truth.brain)]
        if truth.change is not None:
            regions.append(("change", truth.change))
        for region_name, region in regions:
            for metric, value in (
                ("mae", region_mae(image, true_image, region)),
                ("psnr", region_psnr(image, true_image, region, rng)),
                ("ssim", region_nanmean(local_ssim, region)),
            ):
                per_contrast.setdefault(f"image_{metric}_{region_name}", []).append(value)
    for key, values in per_contrast.items():
        finite = [v for v in values if not math.isnan(v)]
        out[key] = float(np.mean(finite)) if finite else float("nan")
    return out


def _summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """mean, std (population) and n over the defined values (NaN skipped; inf kept)."""
    kept = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if kept.size == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = float(np.mean(kept))
    std = float(np.std(kept)) if np.all(np.isfinite(kept)) else None
    return {"mean": mean if math.isfinite(mean) else None, "std": std, "n": int(kept.size)}


@dataclass
class Evaluation:
    """Everything ``evaluate`` measured: aggregates, per-case rows and the montage case."""

    metrics: dict
    rows: list[dict]
    montage: tuple[CaseTruth, dict[str, Prediction]] | None


def case_specs(
    patient: PatientSeries, max_context: int, reconstruction: bool
) -> list[tuple[str, tuple[int, ...], int]]:
    """(kind, context indices, target index) of every case of one patient: the samples of
    ``enumerate_samples``, then one ``current`` case per labelled visit (context: that visit,
    its label hidden, and the visits before it, up to ``max_context``)."""
    specs = [
        (s.kind, s.context, s.target)
        for s in enumerate_samples(patient, max_context, reconstruction)
    ]
    for j, visit in enumerate(patient.visits):
        if visit.label is not None:
            specs.append(("current", tuple(range(max(0, j + 1 - max_context), j + 1)), j))
    return specs


def _loaded_cases(series: Sequence[PatientSeries], max_context: int, reconstruction: bool):
    """(patient, kind, context, target) of every case of ``case_specs``, visits loaded once."""
    for patient in series:
        loaded: dict[int, VisitArrays] = {}
        for kind, context_idx, target in case_specs(patient, max_context, reconstruction):
            for i in (*context_idx, target):
                if i not in loaded:
                    loaded[i] = load_visit(patient.visits[i])
            context = [loaded[i] for i in context_idx]
            if kind == "current":  # its label hidden: the predictor has to segment it
                context[-1] = replace(context[-1], label=None)
            yield patient.patient, kind, context, loaded[target]


def _answers(predictor: Predictor, kind: str) -> bool:
    return kind != "current" or getattr(predictor, "segments", True)


def calibrate_volumes(
    predictors: Sequence[Predictor],
    series: Sequence[PatientSeries],
    progression: ProgressionConfig,
    max_context: int,
    reconstruction: bool = True,
    progress: bool = True,
) -> dict[str, VolumeCalibration]:
    """Each predictor's volume calibration on the labelled cases of ``series`` (the validation
    patients'), by name."""
    cases: dict[str, list[VolumeCase]] = {p.name: [] for p in predictors}
    specs = sum(len(case_specs(s, max_context, reconstruction)) for s in series)
    bar = tqdm(total=specs, desc="calibrating intervals", unit="case", disable=not progress)
    with bar:
        for _, kind, context, target in _loaded_cases(series, max_context, reconstruction):
            bar.update()
            if target.label is None:
                continue
            true_ml = label_volume_ml(target.label, target.affine)
            horizon = horizon_days([v.days for v in context], target.days)
            for predictor in predictors:
                if _answers(predictor, kind):
                    pred = predictor.predict(context, target.days)
                    cases[predictor.name].append(
                        VolumeCase(kind, len(context), horizon, pred.core_volume_ml, true_ml)
                    )
    level, min_days = progression.interval_level, progression.interval_min_days
    return {name: VolumeCalibration.fit(c, level, min_days) for name, c in cases.items()}


def _interval_row(
    calibration: VolumeCalibration | None, truth: CaseTruth, pred: Prediction
) -> dict[str, float]:
    """The case's interval bounds and, where the true volume is known, its interval metrics."""
    if calibration is None:
        return {"volume_low_ml": math.nan, "volume_high_ml": math.nan}
    horizon = horizon_days([v.days for v in truth.context], truth.target.days)
    low, high = calibration.interval(truth.kind, len(truth.context), horizon, pred.core_volume_ml)
    row = {"volume_low_ml": low, "volume_high_ml": high}
    if truth.volume_ml is not None:
        row.update(interval_scores(low, high, truth.volume_ml, calibration.level))
    return row


def select_series(
    series: Sequence[PatientSeries], patients: Sequence[str], role: str
) -> list[PatientSeries]:
    """The series of ``patients`` (the split's ``role`` patients), warning about any without
    one."""
    chosen = [s for s in series if s.patient in set(patients)]
    missing = sorted(set(patients) - {s.patient for s in chosen})
    if missing:
        log.warning("%s patients without registered series (skipped): %s", role, missing)
    return chosen


def select_test_series(series: Sequence[PatientSeries], split: Split) -> list[PatientSeries]:
    """The series of the split's test patients; fails if there are none."""
    chosen = select_series(series, split.test, "test")
    if not chosen:
        raise ValueError(
            f"none of the {len(series)} series belongs to the split's test patients "
            f"{list(split.test)}: is the split from this registry?"
        )
    return chosen


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
    names = [check_token(p.name, "predictor name") for p in predictors]
    if len(set(names)) != len(names):
        raise ValueError(f"predictor names must be unique, got {names}")
    unknown = [m.metric for m in cfg.primary_metrics if m.metric.split(".", 1)[1] not in METRICS]
    if unknown:
        raise ValueError(f"evaluate.primary_metrics: unknown {unknown}; expected {list(METRICS)}")
    chosen = select_test_series(series, split)
    calibration_series = select_series(series, split.val, "validation")
    calibrations: dict[str, VolumeCalibration] = {}
    if calibration_series:
        calibrations = calibrate_volumes(
            predictors, calibration_series, progression, max_context, reconstruction, progress
        )
    else:
        log.warning("the split has no validation patients: no calibrated volume intervals")
    n_cases = sum(len(case_specs(s, max_context, reconstruction)) for s in chosen)
    counts = dict.fromkeys(KINDS, 0)
    rows: list[dict] = []
    montage, montage_size = None, -1
    bar = tqdm(total=n_cases, desc="evaluating cases", unit="case", disable=not progress)
    with bar:
        for patient, kind, context, target in _loaded_cases(chosen, max_context, reconstruction):
            truth = case_truth(patient, kind, context, target, cfg, progression)
            counts[truth.kind] += 1
            predictions = {}
            for predictor in predictors:
                if not _answers(predictor, truth.kind):
                    continue
                pred = predictor.predict(truth.context, truth.target.days)
                _check_prediction(pred, truth, predictor.name)
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
                        **case_metrics(pred, truth),
                        **_interval_row(calibrations.get(predictor.name), truth, pred),
                    }
                )
            size = int(truth.change.sum()) if truth.change is not None else 0
            if truth.kind == "future" and size > montage_size:
                montage, montage_size = (truth, predictions), size
            bar.update()
    metrics = {
        "meta": {
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
        },
        "results": aggregate(rows, names),
        "by_status": aggregate_by_status(rows, names),
        "by_context": aggregate_by_context(rows, names),
        "calibration": {name: c.to_dict() for name, c in calibrations.items()},
    }
    metrics["seed_groups"] = seed_groups(metrics["results"])
    return Evaluation(metrics, rows, montage)


def aggregate(rows: Sequence[dict], names: Sequence[str]) -> dict:
    """``{predictor: {kind: {metric: {mean, std, n}}}}`` over the per-case ``rows``."""
    results: dict = {}
    for name in names:
        for kind in KINDS:
            mine = [r for r in rows if r["predictor"] == name and r["kind"] == kind]
            if not mine:
                continue
            block = {m: _summary([r[m] for r in mine]) for m in _CASE_METRICS}
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
                metric: _summary(
                    [
                        float("nan") if b[metric]["mean"] is None else b[metric]["mean"]
                        for b in blocks
                    ]
                )
                for metric in METRICS
            }
    return groups


def primary_scores(metrics: dict, predictor: str, cfg: EvaluateConfig) -> dict[str, float | None]:
    """The configured primary metrics' means for ``predictor`` (``kind.metric`` -> value)."""
    scores = {}
    for primary in cfg.primary_metrics:
        kind, metric = primary.metric.split(".", 1)
        entry = metrics["results"].get(predictor, {}).get(kind, {}).get(metric)
        scores[primary.metric] = None if entry is None else entry["mean"]
    return scores


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
