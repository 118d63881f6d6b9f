"""DICOM series: discovery from headers (pydicom) and conversion to NIfTI (dcm2niix).

A DICOM folder is grouped by PatientID -> StudyDate (the visit) -> SeriesInstanceUID (one scan);
the contrast name comes from SeriesDescription (or ProtocolName), e.g. ``T1w``.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from mtlgen.io.source_types import (
    PatientSource,
    ScanSource,
    VisitSource,
    mark_duplicates,
    parse_date,
)

log = logging.getLogger(__name__)


class ConversionError(ValueError):
    """dcm2niix could not turn a series into exactly one NIfTI volume."""


def is_dicom(path: Path) -> bool:
    """True if ``path`` carries the DICOM preamble magic ``DICM`` at byte 128."""
    with path.open("rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _modality(ds: pydicom.Dataset) -> str:
    text = str(ds.get("SeriesDescription") or ds.get("ProtocolName") or "").strip()
    if not text:
        text = f"{ds.get('Modality', 'series')}{ds.get('SeriesNumber', '')}"
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "series"


def discover_dicom(root: Path) -> list[PatientSource]:
    """Patients of a folder tree of DICOM files (files without the DICOM magic are skipped)."""
    series: dict[str, dict[str, dict[str, list[Path]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    names: dict[str, str] = {}
    unreadable = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if not is_dicom(path):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, ValueError, EOFError):
            unreadable += 1  # not logged by path: paths may hold source patient ids
            continue
        uid = str(ds.get("SeriesInstanceUID", path.parent))
        series[str(ds.get("PatientID", ""))][str(ds.get("StudyDate", ""))][uid].append(path)
        names[uid] = _modality(ds)
    patients = []
    for patient_id, studies in series.items():
        visits = []
        for study_date, by_uid in sorted(studies.items()):
            problem, when = None, None
            try:
                when = parse_date(study_date)
            except ValueError as exc:
                problem = f"{exc} (DICOM StudyDate)"
            scans = [ScanSource(names[uid], tuple(sorted(files))) for uid, files in by_uid.items()]
            visit_id = re.sub(r"\D", "", study_date) or "nodate"
            visits.append(VisitSource(visit_id, when, tuple(scans), problem=problem))
        patients.append(PatientSource(patient_id, mark_duplicates(visits), "dicom", root))
    if unreadable:
        log.warning("skipped %d files with an unreadable DICOM header", unreadable)
    return patients


def convert_series(files: tuple[Path, ...], workdir: Path) -> Path:
    """Convert one DICOM series with dcm2niix into ``workdir``; return the NIfTI file."""
    import dcm2niix

    inbox = workdir / "dicom"
    inbox.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        (inbox / f"{i:05d}.dcm").symlink_to(f.resolve())
    out = workdir / "nifti"
    out.mkdir(exist_ok=True)
    proc = subprocess.run(
        [dcm2niix.bin, "-z", "n", "-b", "n", "-f", "series_%s", "-o", str(out), str(inbox)],
        capture_output=True,
        text=True,
        check=False,
    )
    produced = sorted(out.glob("*.nii"))
    if proc.returncode != 0 or len(produced) != 1:
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "rror" in ln]
        detail = lines[-1].strip() if lines else f"exit {proc.returncode}"
        raise ConversionError(
            f"dcm2niix produced {len(produced)} volumes from {len(files)} DICOM files ({detail})"
        )
    return produced[0]
