"""Per-case scores: every metric of ``METRICS`` for one prediction against its case's truth."""

from __future__ import annotations

import math

import numpy as np

from mtlgen.evaluate.cases import SEGMENTATION_KINDS, CaseTruth
from mtlgen.evaluate.metrics import (
    dice,
    hd95,
    region_mae,
    region_nanmean,
    region_psnr,
    ssim_map,
    volume_errors,
)
from mtlgen.generative.crps import ensemble_crps
from mtlgen.inference.intervals import VolumeCalibration, horizon_days, interval_scores
from mtlgen.inference.prediction import Prediction
from mtlgen.progression import voxel_spacing_mm

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
    "image_mae_change": "min",  # region from the truth (the label change): secondary
    "image_psnr_change": "max",
    "image_ssim_change": "max",
    "image_mae_near": "min",  # region from the inputs (the reference lesion's neighbourhood)
    "image_psnr_near": "max",
    "image_ssim_near": "max",
    # the CRPS of a generative predictor's samples; a deterministic image scores its MAE
    "image_crps_brain": "min",
    "image_crps_change": "min",
    "image_crps_near": "min",
    "volume_interval_coverage": "level",  # best near the interval level, not at an extreme
    # a generative predictor's samples: the share of the near region's true voxels inside the
    # voxel-wise sample interval, and whether the samples' volume interval holds the truth
    "image_sample_coverage_near": "level",
    "volume_sample_coverage": "level",
    # (P(progressive) - truly progressive)^2: the share of samples that progress, else 0 or 1
    "growth_brier": "min",
    "volume_interval_width_ml": "min",
    "volume_interval_score": "min",
}
CASE_METRICS = [m for m in METRICS if not m.startswith("status_")]


def check_prediction(pred: Prediction, truth: CaseTruth, who: str) -> None:
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
    out = dict.fromkeys(CASE_METRICS, float("nan"))
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
        if contrast not in pred.images or truth.kind in SEGMENTATION_KINDS:
            continue
        image, rng = pred.images[contrast], truth.data_range[contrast]
        local_ssim = ssim_map(image, true_image, rng, truth.ssim_window)
        samples = (pred.samples or {}).get(contrast, image[None])
        crps = ensemble_crps(samples, true_image)
        regions = [("brain", truth.brain)]
        if truth.change is not None:
            regions.append(("change", truth.change))
        if truth.near is not None:
            regions.append(("near", truth.near))
        for region_name, region in regions:
            for metric, value in (
                ("mae", region_mae(image, true_image, region)),
                ("psnr", region_psnr(image, true_image, region, rng)),
                ("ssim", region_nanmean(local_ssim, region)),
                ("crps", region_nanmean(crps, region)),
            ):
                per_contrast.setdefault(f"image_{metric}_{region_name}", []).append(value)
        if pred.samples and contrast in pred.samples and truth.near is not None:
            low, high = sample_interval(pred.samples[contrast], truth.interval_level)
            inside = (true_image >= low) & (true_image <= high)
            per_contrast.setdefault("image_sample_coverage_near", []).append(
                float(inside[truth.near].mean())
            )
    for key, values in per_contrast.items():
        finite = [v for v in values if not math.isnan(v)]
        out[key] = float(np.mean(finite)) if finite else float("nan")
    if pred.volume_samples_ml is not None and truth.volume_ml is not None:
        low, high = sample_interval(pred.volume_samples_ml, truth.interval_level)
        out["volume_sample_coverage"] = float(low <= truth.volume_ml <= high)
    if truth.status is not None and truth.kind not in SEGMENTATION_KINDS:
        out["growth_brier"] = (growth_probability(pred) - (truth.status == "progressive")) ** 2
    return out


def sample_interval(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The central ``level`` interval of ``samples`` along their first axis (percentiles)."""
    tail = 50 * (1 - level)
    low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
    return low, high


def growth_probability(pred: Prediction) -> float:
    """The predicted probability of progression: the share of samples that progress, or 0/1
    from a deterministic predictor's status."""
    if pred.status_probs is not None:
        return float(pred.status_probs["progressive"])
    return float(pred.status == "progressive")


def interval_row(
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
