"""Checks before any processing: which files of a patient are new and valid, and when each
visit took place relative to the baseline.

A file that fails a check is rejected (in the ``Ledger``) with a one-line reason; the others
become ``Pending`` files, waiting to be processed and recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from mtlgen.config import Params
from mtlgen.ids import InvalidIdentifier, check_token
from mtlgen.io.hashing import sha256_files
from mtlgen.io.source_types import LABEL, PatientSource, ScanSource, VisitSource
from mtlgen.io.validate import InvalidScan, Volume, check_image, check_label, read_volume
from mtlgen.register.results import Ledger
from mtlgen.registry.models import Patient

Known = dict[str, set[tuple[str, str]]]  # visit key -> {(modality, sha256)}


@dataclass
class Pending:
    """A new file that passed its checks, waiting to be processed and written."""

    visit: VisitSource
    scan: ScanSource
    sha: str
    volume: Volume
    days: float
    processed: Path | None = None
    result: dict | None = None


def known_versions(patient: Patient | None) -> Known:
    """visit key -> {(modality, sha256)} of every registered version."""
    known: Known = {}
    for visit in patient.visits if patient else []:
        rows = [(s.modality, s.sha256) for s in visit.scans]
        rows += [(LABEL, lb.sha256) for lb in visit.labels]
        known[visit.key] = set(rows)
    return known


def sha_or_reason(scan: ScanSource) -> tuple[str, str | None]:
    """The sha256 of a scan's files (of the files in its folder), or why there is none."""
    try:
        return sha256_files(scan.files), None
    except (FileNotFoundError, IsADirectoryError):
        if len(scan.files) == 1 and scan.files[0].is_dir():
            files = sorted(p for p in scan.files[0].iterdir() if p.is_file())
            return sha256_files(files), None
        return "", f"file not found: {scan.path}"


def days_since_baseline(
    visit: VisitSource, baseline_date: date | None, baseline_days: float | None
) -> float:
    """Days since baseline; raises ValueError for a visit before the baseline."""
    if visit.date is not None and baseline_date is not None:
        days = float((visit.date - baseline_date).days)
    elif visit.days is not None and baseline_date is None:
        days = visit.days
    else:
        raise ValueError("visit dated by days but the baseline by calendar date (or vice versa)")
    if days < 0 or (baseline_days is not None and days < baseline_days):
        raise ValueError(f"follow-up dated before baseline ({days:g} days)")
    return days


def check_visits(
    src: PatientSource, params: Params, known: Known, ledger: Ledger
) -> list[tuple[VisitSource, list[Pending]]]:
    """Visit- and file-level checks; returns visits with their new, valid files."""
    spacing = params.registry.spacing_range_mm
    out = []
    for visit in src.visits:
        problem = visit.problem
        try:
            check_token(visit.visit_id, "visit id")
        except InvalidIdentifier as exc:
            problem = str(exc)
        if problem:
            for scan in visit.files():
                ledger.reject(visit, scan, problem)
            continue
        images: list[Pending] = []
        label_src: tuple[ScanSource, str] | None = None
        for scan in visit.files():
            sha, reason = sha_or_reason(scan)
            if reason is None and scan.problem:
                reason = scan.problem
            if reason is None and scan.modality != LABEL:
                try:
                    check_token(scan.modality, "modality")
                except InvalidIdentifier as exc:
                    reason = str(exc)
            if reason:
                ledger.reject(visit, scan, reason, sha)
            elif (scan.modality, sha) in known.get(visit.visit_id, set()):
                ledger.result.unchanged += 1
            elif scan.modality == LABEL:
                label_src = (scan, sha)
            else:
                try:
                    vol = read_volume(scan.files)
                    check_image(vol, spacing)
                except InvalidScan as exc:
                    ledger.reject(visit, scan, str(exc), sha)
                    continue
                images.append(Pending(visit, scan, sha, vol, 0.0))
        if label_src is not None:
            label = _check_label(visit, *label_src, images, params, ledger)
            if label is not None:
                images.append(label)
        if images:
            out.append((visit, images))
    return out


def _check_label(
    visit: VisitSource,
    scan: ScanSource,
    sha: str,
    images: list[Pending],
    params: Params,
    ledger: Ledger,
) -> Pending | None:
    reference = next((p.volume for p in images), None)
    if reference is None:  # the visit's images are unchanged: read one to compare against
        for other in visit.scans:
            try:
                reference = read_volume(other.files)
                check_image(reference, params.registry.spacing_range_mm)
                break
            except InvalidScan:
                reference = None
    try:
        if reference is None:
            raise InvalidScan("no valid image in this visit to check the label against")
        vol = read_volume(scan.files)
        check_label(vol, reference, params.registry.label_values)
    except InvalidScan as exc:
        ledger.reject(visit, scan, str(exc), sha)
        return None
    return Pending(visit, scan, sha, vol, 0.0)


def date_visits(
    patient: Patient, candidates: list[tuple[VisitSource, list[Pending]]], ledger: Ledger
) -> list[Pending]:
    """Days since baseline for each candidate visit; rejects visits before the baseline,
    duplicates of a registered date, and a changed date of a registered visit."""
    registered = {v.key: v for v in patient.visits}
    by_date = {(v.date or v.days): v.key for v in patient.visits}
    baseline = registered.get(patient.baseline_visit)
    baseline_days = baseline.days if baseline else None
    pending = []
    for visit, files in candidates:
        try:
            if visit.visit_id == patient.baseline_visit:
                days = baseline.days if baseline else (visit.days or 0.0)
            else:
                days = days_since_baseline(visit, patient.baseline_date, baseline_days)
            old = registered.get(visit.visit_id)
            when = visit.date or visit.days
            if old is not None and (old.date or old.days) != when:
                raise ValueError(f"visit date {when} differs from its registered date")
            if old is None and when in by_date:
                raise ValueError(f"duplicate visit: same date as visit {by_date[when]}")
        except ValueError as exc:
            for p in files:
                ledger.reject(visit, p.scan, str(exc), p.sha)
            continue
        for p in files:
            p.days = days
        pending.extend(files)
    return pending
