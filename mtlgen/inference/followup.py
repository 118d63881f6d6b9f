"""Follow-up predictions for registered patients, in the patient's own scan space or on the
model grid.

Per prediction: ``<out_dir>/<pseudonym>/<YYYY-MM-DD>/`` (the target date; ``day-<N>`` when the
registry has no dates) holds the volumes of ``mtlgen.inference.outputs`` (``native``: on the grid
of the last context visit's source scan; ``model``: on the model grid), ``montage.png``
(``mtlgen.inference.montage``) and ``prediction.json``: the model and its sampling settings,
the data version and params hash, when it was made, space, target date and day, core volume
with its calibrated interval, the samples' volume percentiles and status shares (generative
predictors), status, and every context visit's measured lesion volumes. A visit without a label
is segmented by the predictor when it can (from that visit and the ones before it) into
``visits/<visit>.nii.gz``, on that visit's own source grid in native space (on the model grid,
said in its entry, when its source scan cannot be read). ``<out_dir>/predictions.tsv`` sums them
up. The interval comes from the predictor's ``calibration`` (``mtlgen.inference.intervals``);
its bounds are empty for a predictor without one, the upper one where it is unbounded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mtlgen.clock import stamp_now
from mtlgen.config import Params
from mtlgen.ids import check_token
from mtlgen.inference.intervals import VolumeCalibration
from mtlgen.inference.montage import write_montage
from mtlgen.inference.outputs import STD, OutputGrid, Space, output_grid, write_prediction
from mtlgen.inference.prediction import Prediction, Predictor
from mtlgen.inference.target import check_target, context_around, folder_name, target_date
from mtlgen.io.atomic import write_text_atomic
from mtlgen.io.nifti import save_nifti
from mtlgen.io.series import (
    PatientSeries,
    SourceUnavailable,
    VisitArrays,
    VisitVolumes,
    load_visit,
)
from mtlgen.progression import lesion_volumes_ml, voxel_volume_ml

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunInfo:
    """What every prediction of a run records: the model (name and version, or checkpoint),
    the data version when known, the sha256 of the resolved params, and the output space."""

    model: Mapping[str, str]
    space: Space = "native"
    params_sha256: str | None = None
    data_version: Mapping[str, str] | None = field(default=None)

    @classmethod
    def from_params(
        cls, params: Params, model: Mapping[str, str], data_version: Mapping[str, str] | None
    ) -> RunInfo:
        resolved = params.model_dump_json().encode()
        digest = hashlib.sha256(resolved).hexdigest()
        return cls(dict(model), params.predict.space, digest, data_version)


def sampling(predictor: Predictor) -> dict[str, object]:
    """seed, sampler, steps and n_samples of a generative predictor (None for the others)."""
    settings = getattr(predictor, "settings", None)
    sampler = getattr(settings, "sampler", None)
    return {
        "seed": getattr(predictor, "seed", None),
        "sampler": None if sampler is None else str(sampler),
        "steps": getattr(settings, "steps", None),
        "n_samples": getattr(predictor, "n_samples", None),
    }


def _interval(
    calibration: VolumeCalibration | None,
    kind: str,
    visits: int,
    days_ahead: float,
    pred: Prediction,
) -> dict[str, float | None]:
    """The core volume's calibrated interval for a ``kind`` case (future, reconstruction; None
    where absent or unbounded) and its level."""
    if calibration is None:
        return {"core_volume_low_ml": None, "core_volume_high_ml": None, "interval_level": None}
    low, high = calibration.interval(kind, visits, days_ahead, pred.core_volume_ml)
    return {
        "core_volume_low_ml": round(low, 4),
        "core_volume_high_ml": round(high, 4) if math.isfinite(high) else None,
        "interval_level": calibration.level,
    }


def _samples_summary(pred: Prediction) -> dict[str, float] | None:
    """10th, 50th and 90th percentile of the samples' core volumes (None without samples)."""
    if pred.volume_samples_ml is None:
        return None
    p10, p50, p90 = np.percentile(np.asarray(pred.volume_samples_ml, dtype=float), [10, 50, 90])
    return {"p10": round(p10, 4), "p50": round(p50, 4), "p90": round(p90, 4)}


def interval_text(row: Mapping) -> str:
    """A summary row's interval as text, e.g. ``4.79-5.46 ml (80%)``; empty without one."""
    low, high = row["core_volume_low_ml"], row["core_volume_high_ml"]
    if low is None:
        return ""
    return f"{low:.2f}-{'inf' if high is None else f'{high:.2f}'} ml ({row['interval_level']:.0%})"


def _visit_grid(
    space: Space, patient: str, volumes: VisitVolumes, visit: VisitArrays
) -> tuple[OutputGrid, str | None]:
    """A context visit's own output grid and, when native space falls back to the model grid
    (its source scan cannot be read), why."""
    shape = next(iter(visit.images.values())).shape
    try:
        return output_grid(space, volumes, patient, visit.affine, shape), None
    except SourceUnavailable:
        note = "its source scan cannot be read: kept on the model grid"
        return output_grid("model", volumes, patient, visit.affine, shape), note


def measured_visits(
    predictor: Predictor,
    patient: PatientSeries,
    context: Sequence[VisitArrays],
    folder: Path,
    space: Space = "model",
) -> list[dict]:
    """Each context visit's lesion-core and whole-lesion volume (mL): from its label where it
    has one (``source: label``), else from the predictor's segmentation of it, given the visits
    before it, written to ``folder/<visit>.nii.gz`` in ``space`` (``source: model``); without
    either, no volumes."""
    rows = []
    for i, visit in enumerate(context):
        label, source = visit.label, "label"
        row: dict = {"visit": visit.visit, "days": visit.days}
        if label is None and getattr(predictor, "segments", False):
            label, source = predictor.predict(context[: i + 1], visit.days).label, "model"
            grid, note = _visit_grid(space, patient.patient, patient.visits[i], visit)
            name = f"{check_token(visit.visit, 'visit')}.nii.gz"
            save_nifti(folder / name, grid.label(label), grid.target.affine, np.uint8)
            row.update(space=grid.space, **({"space_note": note} if note else {}))
        row["source"] = source if label is not None else None
        if label is not None:
            core, lesion = lesion_volumes_ml(label, voxel_volume_ml(visit.affine))
            row.update(core_ml=round(core, 4), lesion_ml=round(lesion, 4))
        rows.append(row)
    return rows


def _montage(
    folder: Path,
    grid: OutputGrid,
    last: VisitArrays,
    contrasts: Sequence[str],
    written: Mapping[str, np.ndarray],
) -> None:
    """``montage.png``: per predicted contrast, the last visit (when it has it), the predicted
    mean and std."""
    rows: dict[str, dict[str, np.ndarray]] = {}
    for contrast in sorted(contrasts):
        rows[contrast] = {}
        if contrast in last.images:
            rows[contrast]["last visit"] = grid.image(last.images[contrast])
        rows[contrast]["predicted mean"] = written[contrast]
        if f"{contrast}{STD}" in written:
            rows[contrast]["std"] = written[f"{contrast}{STD}"]
    if rows:
        write_montage(folder / "montage.png", rows, written["label"], grid.target.affine)


def predict_followup(
    predictor: Predictor,
    patient: PatientSeries,
    target_days: float,
    out_dir: Path | str,
    run: RunInfo,
) -> dict:
    """Predict ``patient``'s visit at ``target_days`` (days since baseline; after its first
    visit, on none) from the visits before it (and, for a reconstruction, the next one after
    it) into ``<out_dir>/<pseudonym>/<date>/`` on the grid of the last visit before it; return
    its summary row."""
    check_target(patient, target_days)
    volumes = context_around(patient, target_days)
    known = PatientSeries(patient.patient, tuple(volumes))
    relative = Path(check_token(patient.patient, "patient pseudonym"))
    relative /= folder_name(patient, target_days)
    folder = Path(out_dir) / relative
    context = [load_visit(v) for v in volumes]
    n_before = sum(v.days < target_days for v in volumes)
    last = context[n_before - 1]
    grid = output_grid(
        run.space,
        volumes[n_before - 1],
        patient.patient,
        last.affine,
        next(iter(last.images.values())).shape,
    )
    pred = predictor.predict(context, target_days)
    visits = measured_visits(predictor, known, context, folder / "visits", run.space)
    written = write_prediction(pred, grid, folder)
    _montage(folder, grid, last, list(pred.images), written)
    when = target_date(patient, target_days)
    days_ahead = target_days - last.days
    kind = "future" if n_before == len(volumes) else "reconstruction"
    row = {
        "patient": patient.patient,
        "last_visit_days": last.days,
        "target_days": target_days,
        "target_date": None if when is None else when.isoformat(),
        "core_volume_ml": round(float(pred.core_volume_ml), 4),
        **_interval(getattr(predictor, "calibration", None), kind, len(context), days_ahead, pred),
        "status": pred.status,
        "space": grid.space,
        "folder": relative.as_posix(),
    }
    record = {
        **row,
        "days_ahead": days_ahead,
        "kind": kind,
        "model": dict(run.model),
        "data_version": None if run.data_version is None else dict(run.data_version),
        "params_sha256": run.params_sha256,
        **sampling(predictor),
        "generated_at": stamp_now().isoformat(timespec="seconds"),
        "volume_samples_ml": _samples_summary(pred),
        "status_probs": pred.status_probs,
        "files": sorted([*(f"{name}.nii.gz" for name in written), "montage.png"]),
        "visits": visits,
    }
    write_text_atomic(folder / "prediction.json", json.dumps(record, indent=2) + "\n")
    log.info(
        "%s: day %.0f -> core %.2f ml [%s], %s",
        patient.patient,
        target_days,
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
    run: RunInfo,
    progress: bool = True,
) -> list[dict]:
    """``predict_followup`` of each patient's visit ``days_ahead`` after its last one, then
    ``<out_dir>/predictions.tsv``; return the summary rows."""
    if days_ahead <= 0:
        raise ValueError(f"days_ahead must be > 0, got {days_ahead}")
    rows = [
        predict_followup(predictor, patient, patient.visits[-1].days + days_ahead, out_dir, run)
        for patient in tqdm(series, desc="predicting", unit="patient", disable=not progress)
    ]
    write_summary(rows, Path(out_dir))
    return rows


def write_summary(rows: Sequence[Mapping], out_dir: Path) -> Path:
    """``<out_dir>/predictions.tsv``: one summary row per prediction."""
    table = io.StringIO()
    writer = csv.DictWriter(
        table, fieldnames=list(rows[0]) if rows else ["patient"], delimiter="\t"
    )
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(out_dir / "predictions.tsv", table.getvalue())
