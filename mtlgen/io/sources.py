"""Discover what a registration source holds: patients, their visits and the files of each visit.

``discover(SOURCE)`` reads a BIDS folder, a CSV manifest or a folder of DICOM series and returns
one ``PatientSource`` per source patient. Discovery reads only names, tables and DICOM headers;
problems it finds (a missing date, a duplicate entry) are attached as one-line ``problem``
strings so registration can record them as rejections and go on with the rest.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from pathlib import Path

from mtlgen.io.dicom import discover_dicom
from mtlgen.io.source_types import (
    LABEL,
    PatientSource,
    ScanSource,
    VisitSource,
    mark_duplicates,
    parse_date,
)

log = logging.getLogger(__name__)
_NIFTI = re.compile(r"\.nii(\.gz)?$")


class SourceError(ValueError):
    """A source that cannot be read as a whole (unknown layout, manifest lacking a column)."""


def discover(source: Path | str) -> list[PatientSource]:
    """Patients of a BIDS folder, a CSV manifest (``.csv``/``.tsv``) or a DICOM folder."""
    source = Path(source).resolve()
    if source.is_file() and source.suffix.lower() in {".csv", ".tsv"}:
        return discover_manifest(source)
    if source.is_dir() and (
        (source / "dataset_description.json").exists() or any(source.glob("sub-*"))
    ):
        return discover_bids(source)
    if source.is_dir():
        patients = discover_dicom(source)
        if patients:
            return patients
    if not source.exists():
        raise SourceError(f"{source}: no such file or folder")
    raise SourceError(
        f"{source}: not a BIDS folder (dataset_description.json, sub-*/), a CSV/TSV manifest "
        "or a folder of DICOM series"
    )


# ----------------------------------------------------------------------------------------- BIDS
def _bids_dates(subject_dir: Path) -> tuple[dict[str, str], str | None]:
    table = subject_dir / f"{subject_dir.name}_sessions.tsv"
    if not table.exists():
        return {}, f"no sessions table {table.name} with visit dates"
    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if rows and ("session_id" not in rows[0] or "acq_time" not in rows[0]):
        return {}, f"{table.name}: expected columns session_id and acq_time"
    return {r["session_id"]: r["acq_time"] for r in rows}, None


def _bids_suffix(path: Path) -> str:
    return _NIFTI.sub("", path.name).rsplit("_", 1)[-1]


def discover_bids(root: Path) -> list[PatientSource]:
    """``sub-<id>/ses-<id>/anat/*.nii[.gz]``; labels ``derivatives/*/.../*_dseg``; dates from
    ``sub-<id>_sessions.tsv`` (``acq_time``)."""
    patients = []
    for subject_dir in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        dates, table_problem = _bids_dates(subject_dir)
        visits = []
        for ses_dir in sorted(p for p in subject_dir.glob("ses-*") if p.is_dir()):
            scans = [ScanSource(_bids_suffix(f), (f,)) for f in sorted(ses_dir.glob("anat/*.nii*"))]
            rel = Path(subject_dir.name) / ses_dir.name / "anat"
            labels = sorted(root.glob(f"derivatives/*/{rel}/*_dseg.nii*"))
            label = ScanSource(LABEL, (labels[0],)) if labels else None
            visit_date, problem = None, table_problem
            if problem is None:
                try:
                    visit_date = parse_date(dates.get(ses_dir.name))
                except ValueError as exc:
                    problem = f"{exc} for {ses_dir.name} in {subject_dir.name}_sessions.tsv"
            visit_id = ses_dir.name.removeprefix("ses-")
            visits.append(VisitSource(visit_id, visit_date, tuple(scans), label, problem=problem))
        patients.append(
            PatientSource(
                subject_dir.name.removeprefix("sub-"), mark_duplicates(visits), "bids", root
            )
        )
    return patients


# ------------------------------------------------------------------------------------ manifest
_REQUIRED = ("patient", "modality", "image")


def discover_manifest(manifest: Path) -> list[PatientSource]:
    """CSV/TSV with columns patient, modality, image, one of date / days, and optionally visit
    and label. Relative paths are relative to the manifest's folder. Two rows of one contrast in
    one visit are both listed: registration keeps the one that passes its checks."""
    delimiter = "\t" if manifest.suffix.lower() == ".tsv" else ","
    with manifest.open(newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        rows = list(reader)
    missing = [c for c in _REQUIRED if c not in columns]
    if missing or not ({"date", "days"} & set(columns)):
        raise SourceError(
            f"{manifest}: missing column(s) {', '.join(missing) or 'date or days'}; expected "
            "patient, modality, image, date (YYYY-MM-DD) or days, and optionally visit, label"
        )

    def cell(row: dict, name: str) -> str:
        return (row.get(columns.get(name, ""), "") or "").strip()

    def resolve(text: str) -> Path:
        path = Path(text)
        return (path if path.is_absolute() else manifest.parent / path).resolve()

    grouped: dict[str, dict[str, list[tuple[int, dict]]]] = defaultdict(lambda: defaultdict(list))
    for line, row in enumerate(rows, start=2):
        when = cell(row, "date") or cell(row, "days")
        derived = re.sub(r"\D", "", when) if "date" in columns else re.sub(r"\W", "_", f"day{when}")
        visit = cell(row, "visit") or derived
        grouped[cell(row, "patient")][visit or f"row{line}"].append((line, row))

    patients = []
    for patient_id, visit_rows in grouped.items():
        visits = []
        for visit_id, entries in visit_rows.items():
            problem, visit_date, days = None, None, None
            whens = {cell(r, "date") or cell(r, "days") for _, r in entries}
            try:
                if len(whens) > 1:
                    raise ValueError(f"inconsistent dates {sorted(whens)} within one visit")
                if "date" in columns:
                    visit_date = parse_date(cell(entries[0][1], "date"))
                else:
                    days = _parse_days(cell(entries[0][1], "days"))
            except ValueError as exc:
                problem = f"{exc} (manifest line {entries[0][0]})"
            scans, labels = [], {}
            for line, row in entries:
                image = resolve(cell(row, "image"))
                scans.append(ScanSource(cell(row, "modality"), (image,), line=line))
                if cell(row, "label"):
                    labels.setdefault(resolve(cell(row, "label")), line)
            label = None
            if labels:
                label_problem = "different label files for one visit" if len(labels) > 1 else None
                first = sorted(labels)[0]
                label = ScanSource(LABEL, (first,), label_problem, labels[first])
            visits.append(VisitSource(visit_id, visit_date, tuple(scans), label, days, problem))
        patients.append(PatientSource(patient_id, mark_duplicates(visits), "csv", manifest.parent))
    return patients


def _parse_days(text: str) -> float:
    if not text:
        raise ValueError("missing visit days")
    try:
        days = float(text)
    except ValueError:
        raise ValueError(f"unparsable days {text!r} (expected a number)") from None
    if days != days or days in (float("inf"), float("-inf")):
        raise ValueError(f"unparsable days {text!r} (expected a finite number)")
    return days
