"""Follow-up predictions for registered patients: the predicted visit ``days_ahead`` after each
patient's last one, written on the model grid (the patient's baseline-aligned grid).

Per patient: ``<out_dir>/<pseudonym>/<contrast>.nii.gz`` (predicted images), ``label.nii.gz``
(0 background, 1 lesion core, 2 edema) and ``prediction.json`` (target day, core volume and its
calibrated interval, status, the model that made it, and every visit's measured lesion
volumes); a visit without a label is segmented by the predictor when it can (from that visit and
the ones before it) into ``visits/<visit>.nii.gz``. ``<out_dir>/predictions.tsv`` sums them
up. The interval comes from the predictor's ``calibration`` (``mtlgen.inference.intervals``);
its bounds are empty for a predictor without one, the upper one where it is unbounded.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mtlgen.ids import check_token
from mtlgen.inference.intervals import VolumeCalibration
from mtlgen.inference.prediction import Prediction, Predictor
from mtlgen.io.atomic import write_text_atomic
from mtlgen.io.nifti import save_nifti
from mtlgen.io.series import PatientSeries, VisitArrays, load_visit
from mtlgen.progression import lesion_volumes_ml, voxel_volume_ml

log = logging.getLogger(__name__)


def _interval(
    calibration: VolumeCalibration | None, visits: int, days_ahead: float, pred: Prediction
) -> dict[str, float | None]:
    """The core volume's calibrated interval (None where absent or unbounded) and its level."""
    if calibration is None:
        return {"core_volume_low_ml": None, "core_volume_high_ml": None, "interval_level": None}
    low, high = calibration.interval("future", visits, days_ahead, pred.core_volume_ml)
    return {
        "core_volume_low_ml": round(low, 4),
        "core_volume_high_ml": round(high, 4) if math.isfinite(high) else None,
        "interval_level": calibration.level,
    }


def interval_text(row: Mapping) -> str:
    """A summary row's interval as text, e.g. ``4.79-5.46 ml (80%)``; empty without one."""
    low, high = row["core_volume_low_ml"], row["core_volume_high_ml"]
    if low is None:
        return ""
    return f"{low:.2f}-{'inf' if high is None else f'{high:.2f}'} ml ({row['interval_level']:.0%})"


def measured_visits(
    predictor: Predictor, context: Sequence[VisitArrays], folder: Path
) -> list[dict]:
    """Each visit's lesion-core and whole-lesion volume (mL): from its label where it has one
    (``source: label``), else from the predictor's segmentation of it, given the visits before
    it, written to ``folder/<visit>.nii.gz`` (``source: model``); without either, no volumes."""
    rows = []
    for i, visit in enumerate(context):
        label, source = visit.label, "label"
        if label is None and getattr(predictor, "segments", False):
            label, source = predictor.predict(context[: i + 1], visit.days).label, "model"
            name = f"{check_token(visit.visit, 'visit')}.nii.gz"
            save_nifti(folder / name, label, visit.affine, np.uint8)
        row = {
            "visit": visit.visit,
            "days": visit.days,
            "source": source if label is not None else None,
        }
        if label is not None:
            core, lesion = lesion_volumes_ml(label, voxel_volume_ml(visit.affine))
            row.update(core_ml=round(core, 4), lesion_ml=round(lesion, 4))
        rows.append(row)
    return rows


def predict_followup(
    predictor: Predictor,
    patient: PatientSeries,
    days_ahead: float,
    folder: Path | str,
    model: Mapping[str, str],
) -> dict:
    """Predict ``patient``'s visit ``days_ahead`` after its last one into ``folder``
    (images, ``label.nii.gz``, ``prediction.json``); return its summary row."""
    if days_ahead <= 0:
        raise ValueError(f"days_ahead must be > 0, got {days_ahead}")
    folder = Path(folder)
    context = [load_visit(v) for v in patient.visits]
    target = context[-1].days + days_ahead
    pred = predictor.predict(context, target)
    visits = measured_visits(predictor, context, folder / "visits")
    affine = context[-1].affine
    for contrast, image in pred.images.items():
        save_nifti(
            folder / f"{check_token(contrast, 'contrast')}.nii.gz", image, affine, np.float32
        )
    save_nifti(folder / "label.nii.gz", pred.label, affine, np.uint8)
    row = {
        "patient": patient.patient,
        "last_visit_days": context[-1].days,
        "target_days": target,
        "core_volume_ml": round(float(pred.core_volume_ml), 4),
        **_interval(getattr(predictor, "calibration", None), len(context), days_ahead, pred),
        "status": pred.status,
    }
    record = {**row, "model": dict(model), "visits": visits}
    write_text_atomic(folder / "prediction.json", json.dumps(record, indent=2) + "\n")
    log.info(
        "%s: day %.0f -> core %.2f ml [%s], %s",
        patient.patient,
        target,
        row["core_volume_ml"],
        interval_text(row) or "no interval",
        row["status"],
    )
    return row


def predict_followups(
    predictor: Predictor,
    series: Sequence[PatientSeries],
    days_ahead: float,
    out_dir: Path | str,
    model: Mapping[str, str],
    progress: bool = True,
) -> list[dict]:
    """``predict_followup`` for each patient into ``<out_dir>/<pseudonym>/``, then
    ``<out_dir>/predictions.tsv``; return the summary rows."""
    out_dir = Path(out_dir)
    rows = [
        predict_followup(
            predictor,
            patient,
            days_ahead,
            out_dir / check_token(patient.patient, "patient pseudonym"),
            model,
        )
        for patient in tqdm(series, desc="predicting", unit="patient", disable=not progress)
    ]
    table = io.StringIO()
    writer = csv.DictWriter(
        table, fieldnames=list(rows[0]) if rows else ["patient"], delimiter="\t"
    )
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / "predictions.tsv", table.getvalue())
    return rows
