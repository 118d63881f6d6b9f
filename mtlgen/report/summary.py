"""One patient's report content: measured volumes per visit, growth, status, next due date,
the model's forecast there, alignment quality and what awaits review."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date
from itertools import pairwise
from pathlib import Path
from statistics import median

import nibabel as nib
import numpy as np

from mtlgen.config import Params
from mtlgen.inference.followup import RunInfo, measured_visits, predict_followup
from mtlgen.inference.outputs import image_files
from mtlgen.inference.prediction import Predictor
from mtlgen.io.series import PatientSeries, VisitArrays, load_visit
from mtlgen.orchestration.followup import next_visit_due
from mtlgen.progression import Status, progression_status
from mtlgen.registry.models import NEEDS_REVIEW, REJECTED
from mtlgen.report.growth import GrowthFit, fit_growth, status_probabilities
from mtlgen.report.records import PatientRows, redact_paths


@dataclass(frozen=True)
class VisitSummary:
    key: str
    date: date | None
    days: float
    contrasts: tuple[str, ...]  # current scans' contrasts
    core_ml: float | None
    lesion_ml: float | None
    source: str | None  # "label", "model" (the model's segmentation) or None (not measured)
    ncc: float | None  # lowest NCC with the baseline reference over the visit's scans
    mi: float | None


# where a forecast's status probabilities come from, as a page says it
PROBABILITY_SOURCES = {
    "samples": "the share of the generator's samples",
    "interval": "the calibrated interval, read as normal in log volume",
}


@dataclass(frozen=True)
class Forecast:
    """The model's answer at the next due date."""

    model: dict[str, str]
    target_days: float
    core_ml: float
    low_ml: float | None
    high_ml: float | None  # None: unbounded or no interval
    level: float | None
    status: Status
    probabilities: dict[str, float] | None
    # "samples": the share of the generator's samples per status; "interval": the calibrated
    # interval read as normal in log volume; None without probabilities
    probability_source: str | None = None


@dataclass(frozen=True)
class PatientSummary:
    patient: str
    contrasts: tuple[str, ...]  # every contrast the patient has, baseline reference first
    visits: tuple[VisitSummary, ...]
    growth: GrowthFit | None
    status: Status | None  # last measured visit against the one before, by the thresholds
    increase: float
    decrease: float
    due_days: float
    due_date: date | None
    forecast: Forecast | None
    review: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict:
        """A JSON-able dict (dates as ISO text)."""
        data = asdict(self)
        data["doubling_days"] = self.growth.doubling_days if self.growth else None
        return json.loads(json.dumps(data, default=str))


@dataclass
class PatientArrays:
    """What the montage draws: the visits on the baseline grid, each visit's outline (its label
    or the model's segmentation) and the predicted follow-up, if any."""

    visits: list[VisitArrays]
    outlines: dict[str, np.ndarray]  # visit -> label map
    predicted_images: dict[str, np.ndarray] = field(default_factory=dict)
    predicted_label: np.ndarray | None = None


def due_days(rows: PatientRows, default_interval_days: float) -> tuple[float, date | None]:
    """Days since baseline (and date, when the visits have dates) of the next visit: the last
    one plus the median observed interval (``mtlgen.orchestration.followup.next_visit_due``)."""
    dates = [v.date for v in rows.visits if v.date is not None]
    if rows.baseline_date is not None and len(dates) == len(rows.visits):
        due = next_visit_due(dates, default_interval_days)
        return float((due - rows.baseline_date).days), due
    days = sorted(v.days for v in rows.visits)
    gaps = [b - a for a, b in pairwise(days) if b > a]
    return days[-1] + (median(gaps) if gaps else default_interval_days), None


def measured_status(visits: tuple[VisitSummary, ...], increase: float, decrease: float):
    """Status of the last measured visit against the measured visit before it."""
    measured = [v for v in visits if v.core_ml is not None]
    if len(measured) < 2:
        return None
    return progression_status(measured[-2].core_ml, measured[-1].core_ml, increase, decrease)


def _review(rows: PatientRows) -> list[str]:
    """What a person should look at: scans the quality gate holds back (``mtlgen registry
    review``) or that were rejected there, scans not processed, and rejected files."""
    items = []
    for visit in rows.visits:
        for scan in (*visit.scans, *((visit.label,) if visit.label else ())):
            where = f"visit {visit.key} {scan.contrast}"
            if scan.review == NEEDS_REVIEW:
                items.append(f"{where}: awaiting review, {redact_paths(scan.review_reason or '')}")
            elif scan.review == REJECTED:
                items.append(f"{where}: rejected at review")
            elif scan.processed is None:
                items.append(f"{where}: registered, not processed")
    return items + [f"rejected, {r}" for r in rows.rejections]


def _visit_summaries(rows: PatientRows, measured: list[dict]) -> tuple[VisitSummary, ...]:
    """Each registered visit with its measured volumes (``measured_visits`` rows)."""
    by_key = {m["visit"]: m for m in measured}
    visits = []
    for v in rows.visits:
        m = by_key.get(v.key, {})
        nccs = [s.ncc for s in v.scans if s.ncc is not None]
        mis = [s.mi for s in v.scans if s.mi is not None]
        visits.append(
            VisitSummary(
                v.key,
                v.date,
                v.days,
                tuple(s.contrast for s in v.scans),
                m.get("core_ml"),
                m.get("lesion_ml"),
                m.get("source"),
                min(nccs) if nccs else None,
                min(mis) if mis else None,
            )
        )
    return tuple(visits)


def forecast_from_record(
    record: dict, reference_ml: float, increase: float, decrease: float
) -> Forecast:
    """A ``prediction.json`` record as a ``Forecast``. Its status probabilities are the
    generator's (the share of its samples per status) when the record has them, else read from
    the calibrated interval (``status_probabilities``)."""
    probabilities, source = record.get("status_probs"), "samples"
    if not probabilities:
        probabilities, source = (
            status_probabilities(
                record["core_volume_ml"],
                record["core_volume_high_ml"],
                record["interval_level"],
                reference_ml,
                increase,
                decrease,
            ),
            "interval",
        )
    return Forecast(
        dict(record["model"]),
        record["target_days"],
        record["core_volume_ml"],
        record["core_volume_low_ml"],
        record["core_volume_high_ml"],
        record["interval_level"],
        record["status"],
        probabilities,
        source if probabilities else None,
    )


def _predict(
    predictor: Predictor,
    series: PatientSeries,
    target_days: float,
    model: dict,
    arrays: PatientArrays,
) -> tuple[dict, list[dict]]:
    """Forecast the visit at ``target_days`` and segment the unlabelled visits, on the model
    grid; fill ``arrays`` (outlines, predicted images and label); return the record and
    measured visits."""
    with tempfile.TemporaryDirectory(prefix="mtlgen-report-") as tmp:
        row = predict_followup(predictor, series, target_days, tmp, RunInfo(model, "model"))
        folder = Path(tmp) / row["folder"]
        record = json.loads((folder / "prediction.json").read_text())
        for v in record["visits"]:
            if v["source"] == "model":
                seg = nib.load(folder / "visits" / f"{v['visit']}.nii.gz")
                arrays.outlines[v["visit"]] = np.asarray(seg.dataobj, np.uint8)
        arrays.predicted_images = {  # every contrast of the context, also one the last lacks
            path.name.removesuffix(".nii.gz"): np.asarray(nib.load(path).dataobj, np.float32)
            for path in image_files(folder)
        }
        arrays.predicted_label = np.asarray(nib.load(folder / "label.nii.gz").dataobj, np.uint8)
    return record, record["visits"]


def summarise(
    rows: PatientRows,
    params: Params,
    predictor: Predictor | None = None,
    model: Mapping[str, str] | None = None,
) -> tuple[PatientSummary, PatientArrays]:
    """The report content of one patient; with a ``predictor`` (and its ``model`` description)
    its forecast at the next due date and its segmentation of visits without a label."""
    prog = params.progression
    series = rows.series()
    context = [load_visit(v) for v in series.visits]
    target, due = due_days(rows, params.flows.follow_up_days)
    arrays = PatientArrays(context, {v.visit: v.label for v in context if v.label is not None})
    record, notes, measured = None, [], None
    if predictor is not None and context:
        try:
            record, measured = _predict(predictor, series, target, dict(model or {}), arrays)
        except ValueError as exc:  # e.g. the usable visits lack a contrast the model reads
            notes.append(f"no forecast: {redact_paths(str(exc))}")
    elif predictor is None:
        notes.append("no model: no forecast and no segmentation of visits without a label")
    if measured is None:
        with tempfile.TemporaryDirectory(prefix="mtlgen-report-") as tmp:
            measured = measured_visits(None, series, context, Path(tmp))
    visits = _visit_summaries(rows, measured)
    done = [v for v in visits if v.core_ml is not None]
    reference = done[-1].core_ml if done else 0.0
    others = sorted({c for v in visits for c in v.contrasts} - {rows.reference})
    summary = PatientSummary(
        rows.pseudonym,
        (rows.reference, *others),
        visits,
        fit_growth([v.days for v in done], [v.core_ml for v in done]),
        measured_status(visits, prog.increase, prog.decrease),
        prog.increase,
        prog.decrease,
        target,
        due,
        forecast_from_record(record, reference, prog.increase, prog.decrease) if record else None,
        tuple(_review(rows)),
        tuple(notes),
    )
    return summary, arrays


def due_date_text(summary: PatientSummary) -> str:
    """The due date (ISO) or, for a patient without dates, its day since baseline."""
    if summary.due_date is not None:
        return summary.due_date.isoformat()
    return f"day {summary.due_days:.0f}"
