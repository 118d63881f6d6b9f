"""Checks before any processing: which files of a patient are new and valid, and when each
visit took place relative to the baseline.

A file that fails a check is rejected (in the ``Ledger``) with a one-line reason; the others
become ``Pending`` files, waiting to be processed and recorded. The file policy
(``mtlgen.io.policy``) is checked before any file is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from mtlgen.config import Params, RegistryConfig
from mtlgen.ids import InvalidIdentifier, check_token
from mtlgen.io.hashing import sha256_files
from mtlgen.io.policy import Refused, admit
from mtlgen.io.source_types import LABEL, PatientSource, ScanSource, VisitSource
from mtlgen.io.validate import InvalidScan, Volume, check_image, check_label, read_volume
from mtlgen.register.quality import head_problem
from mtlgen.register.results import Ledger
from mtlgen.registry.models import Patient

Known = dict[str, set[tuple[str, str]]]  # visit key -> {(modality, sha256)}


@dataclass
class Pending:
    """A new file that passed its checks, waiting to be processed and written; ``review`` says
    why the quality gate holds it back (None: it passed)."""

    visit: VisitSource
    scan: ScanSource
    sha: str
    volume: Volume
    days: float
    processed: Path | None = None
    result: dict | None = None
    review: str | None = None


@dataclass
class _Checked:
    """One image of a visit after the file checks: rejected (``reason``), already registered
    (``known``) or read (``volume``, with ``head`` saying why it does not look like a head)."""

    scan: ScanSource
    sha: str = ""
    reason: str | None = None
    known: bool = False
    volume: Volume | None = None
    head: str | None = None


def known_versions(patient: Patient | None) -> Known:
    """visit key -> {(modality, sha256)} of every registered version."""
    known: Known = {}
    for visit in patient.visits if patient else []:
        rows = [(s.modality, s.sha256) for s in visit.scans]
        rows += [(LABEL, lb.sha256) for lb in visit.labels]
        known[visit.key] = set(rows)
    return known


def source_roots(src: PatientSource, reg: RegistryConfig) -> list[Path]:
    """The folders a patient's files may lie under: its source folder and ``allowed_roots``."""
    return [*([src.root] if src.root is not None else []), *reg.allowed_roots]


def read_files(
    scan: ScanSource, roots: list[Path], reg: RegistryConfig
) -> tuple[tuple[Path, ...], str]:
    """The files a scan stands for and their sha256 (``Refused`` if the file policy refuses
    them)."""
    max_bytes = int(reg.max_file_mb * 2**20)
    files = admit(scan.files, roots, max_bytes)
    try:
        return files, sha256_files(files, max_bytes)
    except ValueError as exc:
        raise Refused(f"grew while read: {exc}") from None


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
    src: PatientSource, params: Params, known: Known, ledger: Ledger, key: bytes | None = None
) -> list[tuple[VisitSource, list[Pending]]]:
    """Visit- and file-level checks; returns visits with their new, valid files. Of two images
    of one contrast in a visit, the one that passes the checks is kept (else the first)."""
    reg = params.registry
    roots = source_roots(src, reg)
    out = []
    for visit in src.visits:
        problem = visit.problem
        try:
            check_token(visit.visit_id, "visit id", private=True, key=key)
        except InvalidIdentifier as exc:
            problem = str(exc)
        if problem:
            for scan in visit.files():
                ledger.reject(visit, scan, problem)
            continue
        images: list[Pending] = []
        by_modality: dict[str, list[_Checked]] = {}
        for scan in visit.scans:
            checked = _check_image(scan, roots, reg, known.get(visit.visit_id, set()), key)
            by_modality.setdefault(scan.modality, []).append(checked)
        for group in by_modality.values():
            kept = _keep_one(visit, group, ledger)
            if kept is not None and kept.known:
                ledger.result.unchanged += 1
            elif kept is not None:
                images.append(
                    Pending(visit, kept.scan, kept.sha, kept.volume, 0.0, review=kept.head)
                )
        if visit.label is not None:
            label = _check_label(visit, visit.label, roots, images, params, known, ledger)
            if label is not None:
                images.append(label)
        if images:
            out.append((visit, images))
    return out


def _check_image(
    scan: ScanSource,
    roots: list[Path],
    reg: RegistryConfig,
    known: set[tuple[str, str]],
    key: bytes | None,
) -> _Checked:
    out = _Checked(scan)
    try:
        files, out.sha = read_files(scan, roots, reg)
        if scan.problem:
            raise InvalidScan(scan.problem)
        check_token(scan.modality, "modality", private=True, key=key)
        if (scan.modality, out.sha) in known:
            out.known = True
            return out
        out.volume = read_volume(files)
        check_image(out.volume, reg.spacing_range_mm)
    except (Refused, InvalidScan, InvalidIdentifier) as exc:
        out.reason = str(exc)
        return out
    out.head = head_problem(out.volume, reg)
    return out


def _keep_one(visit: VisitSource, group: list[_Checked], ledger: Ledger) -> _Checked | None:
    """The image of a contrast to keep: the registered one, else the first that passes every
    check (head included), else the first valid one; the others are rejected."""
    valid = [c for c in group if c.reason is None]
    kept = next(
        (c for c in valid if c.known),
        next((c for c in valid if c.head is None), valid[0] if valid else None),
    )
    for c in group:
        if c.reason is not None:
            ledger.reject(visit, c.scan, c.reason, c.sha)
        elif c is not kept:
            which = f"manifest line {kept.scan.line}" if kept.scan.line else "another file"
            if kept.known:
                which = f"the registered one ({which})"
            elif kept.head is None:
                which += ", which passes the checks"
            extra = f"; this one {c.head}" if c.head else ""
            ledger.reject(
                visit,
                c.scan,
                f"duplicate {c.scan.modality} image in this visit: kept {which}{extra}",
                c.sha,
            )
    return kept


def _check_label(
    visit: VisitSource,
    scan: ScanSource,
    roots: list[Path],
    images: list[Pending],
    params: Params,
    known: Known,
    ledger: Ledger,
) -> Pending | None:
    reg = params.registry
    sha = ""
    try:
        files, sha = read_files(scan, roots, reg)
        if scan.problem:
            raise InvalidScan(scan.problem)
        if (LABEL, sha) in known.get(visit.visit_id, set()):
            ledger.result.unchanged += 1
            return None
        reference = next((p.volume for p in images), None) or _visit_image(visit, roots, reg)
        if reference is None:
            raise InvalidScan("no valid image in this visit to check the label against")
        vol = read_volume(files)
        check_label(vol, reference, reg.label_values)
    except (Refused, InvalidScan) as exc:
        ledger.reject(visit, scan, str(exc), sha)
        return None
    return Pending(visit, scan, sha, vol, 0.0)


def _visit_image(visit: VisitSource, roots: list[Path], reg: RegistryConfig) -> Volume | None:
    """A valid image of the visit (its images are unchanged: read one to compare against)."""
    for other in visit.scans:
        try:
            reference = read_volume(admit(other.files, roots, int(reg.max_file_mb * 2**20)))
            check_image(reference, reg.spacing_range_mm)
            return reference
        except (Refused, InvalidScan):
            continue
    return None


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
