"""Calibration on cases the model has not learned from: volume intervals of predictors
(``mtlgen.inference.intervals``), for evaluation and for a trained checkpoint, and a trained
checkpoint's image fallback (``mtlgen.inference.fallback``).

A handful of validation patients gives too few cases for an 80 % interval of a forecast from
one visit (measured over 6 splits of each cohort with the growth prior alone,
``bench/volume_corrections.py --coverage``). The progression head's forecast of a case whose
context masks are given is a closed form with two fitted numbers per volume type (the growth
prior), so a checkpoint's intervals also use the training patients' future and gap-filling
cases whose visits are all labelled, each forecast by a growth prior fitted without that
patient (``cross_fitted_cases``): out of sample, as the validation patients' are."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from mtlgen.config import EvaluateConfig, Params, ProgressionConfig
from mtlgen.data.splits import Split
from mtlgen.data.trajectories import Trajectories, volume_trajectories
from mtlgen.evaluate.cases import (
    SEGMENTATION_KINDS,
    answers,
    case_specs,
    loaded_cases,
    select_series,
    visit_brain,
)
from mtlgen.inference.baselines import CopyLast, reference_visit
from mtlgen.inference.fallback import FallbackErrors, ImageFallback, near_lesion
from mtlgen.inference.intervals import VolumeCalibration, VolumeCase, group_of, horizon_days
from mtlgen.inference.model import ModelPredictor, load_predictor
from mtlgen.inference.prediction import Predictor
from mtlgen.io.series import PatientSeries
from mtlgen.models.priors import extrapolated_log_volume, fit_growth_prior, gompertz_weights
from mtlgen.progression import DAYS_PER_YEAR, label_volume_ml, voxel_spacing_mm

log = logging.getLogger(__name__)


CROSS_FIT_FOLDS = 5  # groups of training patients, each forecast by a prior fitted on the others


def volume_cases(
    predictors: Sequence[Predictor],
    series: Sequence[PatientSeries],
    max_context: int,
    reconstruction: bool = True,
    progress: bool = True,
) -> dict[str, list[VolumeCase]]:
    """Each predictor's volume forecasts of the labelled cases of ``series`` (the validation
    patients'), by name; a generative predictor's volume is its ``point_forecast``'s."""
    cases: dict[str, list[VolumeCase]] = {p.name: [] for p in predictors}
    specs = sum(len(case_specs(s, max_context, reconstruction)) for s in series)
    bar = tqdm(total=specs, desc="calibrating intervals", unit="case", disable=not progress)
    with bar:
        for _, kind, context, target in loaded_cases(series, max_context, reconstruction):
            bar.update()
            if target.label is None:
                continue
            true_ml = label_volume_ml(target.label, target.affine)
            horizon = horizon_days([v.days for v in context], target.days)
            for predictor in predictors:
                if answers(predictor, kind):
                    point = getattr(predictor, "point_forecast", predictor)
                    pred = point.predict(context, target.days)
                    cases[predictor.name].append(
                        VolumeCase(kind, len(context), horizon, pred.core_volume_ml, true_ml)
                    )
    return cases


def growth_prior_cases(
    cases: Trajectories, capacity: torch.Tensor, weight: torch.Tensor
) -> list[VolumeCase]:
    """The progression head's core-volume forecast of ``cases`` by the growth prior
    (``fit_growth_prior``'s carrying capacities and Gompertz weights), as calibration cases."""
    log_volume = extrapolated_log_volume(
        cases.volumes, cases.years, cases.valid, cases.ref, gompertz_weights(weight), capacity
    )
    out = []
    for i in range(len(cases)):
        valid = cases.valid[i]
        horizon = horizon_days((cases.years[i][valid] * DAYS_PER_YEAR).tolist(), 0.0)
        predicted = float(log_volume[i, 0].expm1().clamp_min(0.0))
        true_ml = float(cases.truth[i, 0])
        out.append(VolumeCase(cases.kinds[i], int(valid.sum()), horizon, predicted, true_ml))
    return out


def cross_fitted_cases(cases: Trajectories, folds: int = CROSS_FIT_FOLDS) -> list[VolumeCase]:
    """``growth_prior_cases`` of every case, each patient's by the growth prior fitted on the
    future cases of the other ``folds - 1`` groups of patients (fold by fold)."""
    patients = sorted(set(cases.patients))
    out: list[VolumeCase] = []
    for k in range(min(folds, len(patients))):
        held = patients[k::folds]
        rest = cases.of([p for p in patients if p not in held]).future()
        if len(rest):
            prior = fit_growth_prior(rest.volumes, rest.years, rest.valid, rest.ref, rest.truth)
            out += growth_prior_cases(cases.of(held), *prior)
    return out


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
    cases = volume_cases(predictors, series, max_context, reconstruction, progress)
    level, min_days = progression.interval_level, progression.interval_min_days
    return {name: VolumeCalibration.fit(c, level, min_days) for name, c in cases.items()}


def fit_image_fallback(
    predictor: ModelPredictor,
    series: Sequence[PatientSeries],
    cfg: EvaluateConfig,
    max_context: int,
    reconstruction: bool = True,
) -> ImageFallback:
    """The image fallback (``mtlgen.inference.fallback``) of ``predictor``'s network on the
    future and reconstruction cases of ``series`` (the validation patients'): per group, region
    and contrast, the weight of its image change from copy-last with the least error over the
    brain (the evaluation's brain region of the true image)."""
    raw = ModelPredictor(predictor.model, predictor.device)  # its images as the network answers
    copy_last = CopyLast()
    errors = FallbackErrors()
    for _, kind, context, target in loaded_cases(series, max_context, reconstruction):
        if kind in SEGMENTATION_KINDS:
            continue
        model, copy = raw.predict(context, target.days), copy_last.predict(context, target.days)
        reference = reference_visit(context, target.days)
        spacing = voxel_spacing_mm(reference.affine)
        label = reference.label if reference.label is not None else model.label
        near = near_lesion(label, spacing, cfg.near_mm)
        brain = visit_brain(target, cfg)
        group = group_of(kind, len(context))
        for contrast in model.images.keys() & target.images.keys():
            errors.add(
                group,
                contrast,
                model.images[contrast],
                copy.images[contrast],
                target.images[contrast],
                near,
                brain,
            )
    return ImageFallback.fit(errors, cfg.near_mm)


def calibrate_checkpoint(
    params: Params, series: Sequence[PatientSeries], split: Split, checkpoint_dir: Path
) -> Path | None:
    """Calibrate a trained 3-D checkpoint's volume intervals (on the split's validation
    patients, and with a progression head also on ``cross_fitted_cases`` of its training
    patients) and, with an image head, its image fallback (validation patients) and save them
    beside its weights (``calibration.json``, ``fallback.json``), so that the registered model
    carries them into ``mtlgen predict``. Returns the intervals' file; None (nothing written)
    without validation patients or for a 2-D model."""
    val_series = select_series(series, split.val, "validation")
    if not val_series:
        log.warning("no validation patients: %s gets no volume intervals", checkpoint_dir)
        return None
    try:
        predictor = load_predictor(checkpoint_dir)
    except ValueError as exc:  # a 2-D model answers slices, not the volumes a case needs
        log.warning("%s: no volume intervals (%s)", checkpoint_dir, exc)
        return None
    max_context, reconstruction = params.data.max_context, params.data.reconstruction
    cases = volume_cases([predictor], val_series, max_context, reconstruction)[predictor.name]
    n_val = len(cases)
    if "progression" in predictor.model.tasks:
        train_series = select_series(series, split.train, "training")
        cases += cross_fitted_cases(volume_trajectories(train_series, max_context, reconstruction))
    progression = params.progression
    calibration = VolumeCalibration.fit(
        cases, progression.interval_level, progression.interval_min_days
    )
    path = calibration.save(checkpoint_dir)
    log.info(
        "volume intervals at level %g calibrated on %d validation and %d cross-fitted training"
        " cases -> %s",
        calibration.level,
        n_val,
        len(cases) - n_val,
        path,
    )
    if "image" in predictor.model.tasks:
        fallback = fit_image_fallback(
            predictor,
            val_series,
            params.evaluate,
            params.data.max_context,
            params.data.reconstruction,
        )
        log.info(
            "image fallback on the validation patients (weight of the model's change from "
            "copy-last; 1 keeps it, 0 answers copy-last): %s -> %s",
            fallback.weights.get("all", {}),
            fallback.save(checkpoint_dir),
        )
    return path
