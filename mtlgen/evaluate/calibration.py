"""Volume-interval calibration of predictors on the validation patients' cases
(``mtlgen.inference.intervals``), for evaluation and for a trained checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from mtlgen.config import Params, ProgressionConfig
from mtlgen.data.splits import Split
from mtlgen.evaluate.cases import answers, case_specs, loaded_cases, select_series
from mtlgen.inference.intervals import VolumeCalibration, VolumeCase, horizon_days
from mtlgen.inference.model import load_predictor
from mtlgen.inference.prediction import Predictor
from mtlgen.io.series import PatientSeries
from mtlgen.progression import label_volume_ml

log = logging.getLogger(__name__)


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
        for _, kind, context, target in loaded_cases(series, max_context, reconstruction):
            bar.update()
            if target.label is None:
                continue
            true_ml = label_volume_ml(target.label, target.affine)
            horizon = horizon_days([v.days for v in context], target.days)
            for predictor in predictors:
                if answers(predictor, kind):
                    pred = predictor.predict(context, target.days)
                    cases[predictor.name].append(
                        VolumeCase(kind, len(context), horizon, pred.core_volume_ml, true_ml)
                    )
    level, min_days = progression.interval_level, progression.interval_min_days
    return {name: VolumeCalibration.fit(c, level, min_days) for name, c in cases.items()}


def calibrate_checkpoint(
    params: Params, series: Sequence[PatientSeries], split: Split, checkpoint_dir: Path
) -> Path | None:
    """Calibrate a trained 3-D checkpoint's volume intervals on the split's validation patients
    and save them beside its weights (``calibration.json``), so that the registered model
    carries them into ``mtlgen predict``. None (nothing written) without validation patients
    or for a 2-D model."""
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
