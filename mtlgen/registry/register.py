"""Register a patient's scan series: record every file, put accepted scans on the model grid and
align every follow-up to the patient's baseline.

``register_patient`` is the unit of work (what a Prefect task calls per patient);
``register_source`` discovers a source and loops over its patients with a progress bar.

Idempotent: a file whose content (sha256) is already registered for its visit and contrast is
``unchanged``; a changed file becomes the next version and the old one is kept as superseded.
Bad input is *recorded and returned* as a rejection; ``OSError`` (I/O trouble worth a retry)
propagates. Heavy work runs outside any transaction; the writes of one patient are one short
transaction, made race-free by unique constraints (and ``BEGIN IMMEDIATE`` on SQLite).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload
from tqdm import tqdm

from mtlgen.config import Params
from mtlgen.ids import InvalidIdentifier, check_token
from mtlgen.io.hashing import sha256_files
from mtlgen.io.nifti import save_nifti
from mtlgen.io.sources import PatientSource, ScanSource, VisitSource, discover
from mtlgen.io.validate import InvalidScan, Volume, check_image, check_label, read_volume
from mtlgen.preprocess.align import AlignmentFailed, ncc, rigid_align
from mtlgen.preprocess.grid import Grid, brain_center, grid_around
from mtlgen.preprocess.resample import normalise, resample_to_grid
from mtlgen.registry.db import session_scope
from mtlgen.registry.models import (
    CURRENT,
    SUPERSEDED,
    Label,
    Patient,
    PatientId,
    Rejection,
    Result,
    Scan,
    Visit,
)
from mtlgen.registry.pseudonym import load_key, pseudonymise

log = logging.getLogger(__name__)
LABEL = "label"
_MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class Rejected:
    """One rejected file: its source path, the visit and contrast it claimed, and why."""

    path: str
    visit: str | None
    kind: str
    reason: str


@dataclass
class PatientResult:
    """What registering one patient did (``pseudonym`` is None if the source id was invalid)."""

    pseudonym: str | None
    registered: int = 0
    unchanged: int = 0
    rejected: list[Rejected] = field(default_factory=list)


@dataclass
class SourceResult:
    patients: list[PatientResult]

    @property
    def registered(self) -> int:
        return sum(p.registered for p in self.patients)

    @property
    def unchanged(self) -> int:
        return sum(p.unchanged for p in self.patients)

    @property
    def rejected(self) -> list[Rejected]:
        return [r for p in self.patients for r in p.rejected]


@dataclass
class _Pending:
    """A new file that passed its checks, waiting to be processed and written."""

    visit: VisitSource
    scan: ScanSource
    sha: str
    volume: Volume
    days: float
    processed: Path | None = None
    result: dict | None = None


# ---------------------------------------------------------------------------------- helpers
def _load_patient(session: Session, pseudonym: str) -> Patient | None:
    return session.scalars(
        select(Patient)
        .where(Patient.pseudonym == pseudonym)
        .options(
            selectinload(Patient.visits).selectinload(Visit.scans).selectinload(Scan.result),
            selectinload(Patient.visits).selectinload(Visit.labels).selectinload(Label.result),
        )
    ).one_or_none()


def _sha_or_reason(scan: ScanSource) -> tuple[str, str | None]:
    try:
        return sha256_files(scan.files), None
    except (FileNotFoundError, IsADirectoryError):
        if len(scan.files) == 1 and scan.files[0].is_dir():
            files = sorted(p for p in scan.files[0].iterdir() if p.is_file())
            return sha256_files(files), None
        return "", f"file not found: {scan.path}"


def _days(visit: VisitSource, baseline_date, baseline_days: float | None) -> float:
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


def _reference(available: list[str], preferred: list[str]) -> str:
    for modality in preferred:
        if modality in available:
            return modality
    return sorted(available)[0]


def _grid_image(vol: Volume, grid: Grid, to_baseline: np.ndarray, params: Params):
    values, inside = resample_to_grid(vol, grid, to_baseline, order=1)
    return normalise(values, inside, params.preprocess.intensity_percentiles), inside


# ------------------------------------------------------------------------------ entry points
def register_source(source: Path | str, params: Params, progress: bool = True) -> SourceResult:
    """Discover ``source`` and register each patient (see ``register_patient``)."""
    patients = discover(source)
    key = load_key(params.registry.key_file)
    log.info("registering %d patients from %s into %s", len(patients), source, _safe_url(params))
    results = []
    for patient in tqdm(patients, desc="registering", unit="patient", disable=not progress):
        results.append(register_patient(patient, params, key))
    return SourceResult(results)


def _safe_url(params: Params) -> str:
    from sqlalchemy.engine import make_url

    return make_url(params.registry.url).render_as_string(hide_password=True)


def register_patient(src: PatientSource, params: Params, key: bytes | None = None) -> PatientResult:
    """Register one patient's files: validate, record, preprocess and align.

    Returns the counts of registered / unchanged files and the rejections (also recorded in the
    registry). Raises ``OSError`` on I/O failures, which a caller may retry.
    """
    key = key if key is not None else load_key(params.registry.key_file)
    try:
        check_token(src.patient_id, "patient id")
    except InvalidIdentifier as exc:
        result = PatientResult(None)
        for scan in src.files():
            result.rejected.append(Rejected(str(scan.path), None, scan.modality, str(exc)))
        _write(params, None, result, [], {})
        return result
    pseudonym = pseudonymise(src.patient_id, key)
    return _Registration(src, params, pseudonym).run()


class _LostRace(Exception):
    """Another process created the patient between our read and our insert."""


class _Registration:
    """The state of registering one patient (one instance per call)."""

    def __init__(
        self, src: PatientSource, params: Params, pseudonym: str, attempt: int = 1
    ) -> None:
        self.src, self.params, self.pseudonym, self.attempt = src, params, pseudonym, attempt
        self.result = PatientResult(pseudonym)
        self.shas: dict[tuple[str, str], str] = {}

    def reject(self, visit: VisitSource | None, scan: ScanSource, reason: str, sha: str = ""):
        visit_id = visit.visit_id if visit else None
        self.result.rejected.append(Rejected(str(scan.path), visit_id, scan.modality, reason))
        self.shas.setdefault((visit_id or "", str(scan.path)), sha)

    def run(self) -> PatientResult:
        reg = self.params.registry
        with session_scope(reg.url, reg.sqlite_timeout_s) as session:
            patient = _load_patient(session, self.pseudonym)
        known = self._known(patient)
        candidates = self._check_visits(known)
        if patient is None and candidates:
            try:
                patient = self._create_patient(candidates)
            except _LostRace:  # another process registered this patient meanwhile
                return self._again()
        pending = self._dated(patient, candidates) if patient else []
        if patient is not None:
            self._process(patient, pending)
        try:
            _write(self.params, patient, self.result, pending, self.shas)
        except IntegrityError:  # a concurrent registration wrote the same rows first
            return self._again()
        log.info(
            "patient %s: %d registered, %d unchanged, %d rejected",
            self.pseudonym,
            self.result.registered,
            self.result.unchanged,
            len(self.result.rejected),
        )
        return self.result

    def _again(self) -> PatientResult:
        """Start over against the registry as another process left it (bounded)."""
        if self.attempt >= _MAX_ATTEMPTS:
            raise RuntimeError(f"patient {self.pseudonym}: gave up after {self.attempt} races")
        log.info("patient %s: concurrent registration detected, starting over", self.pseudonym)
        return _Registration(self.src, self.params, self.pseudonym, self.attempt + 1).run()

    @staticmethod
    def _known(patient: Patient | None) -> dict[str, set[tuple[str, str]]]:
        """visit key -> {(modality, sha256)} of every registered version."""
        known: dict[str, set[tuple[str, str]]] = {}
        for visit in patient.visits if patient else []:
            rows = [(s.modality, s.sha256) for s in visit.scans]
            rows += [(LABEL, lb.sha256) for lb in visit.labels]
            known[visit.key] = set(rows)
        return known

    def _check_visits(self, known) -> list[tuple[VisitSource, list[_Pending]]]:
        """Visit- and file-level checks; returns visits with their new, valid files."""
        spacing = self.params.registry.spacing_range_mm
        out = []
        for visit in self.src.visits:
            problem = visit.problem
            try:
                check_token(visit.visit_id, "visit id")
            except InvalidIdentifier as exc:
                problem = str(exc)
            if problem:
                for scan in visit.files():
                    self.reject(visit, scan, problem)
                continue
            images: list[_Pending] = []
            label_src: tuple[ScanSource, str] | None = None
            for scan in visit.files():
                sha, reason = _sha_or_reason(scan)
                if reason is None and scan.problem:
                    reason = scan.problem
                if reason is None and scan.modality != LABEL:
                    try:
                        check_token(scan.modality, "modality")
                    except InvalidIdentifier as exc:
                        reason = str(exc)
                if reason:
                    self.reject(visit, scan, reason, sha)
                elif (scan.modality, sha) in known.get(visit.visit_id, set()):
                    self.result.unchanged += 1
                elif scan.modality == LABEL:
                    label_src = (scan, sha)
                else:
                    try:
                        vol = read_volume(scan.files)
                        check_image(vol, spacing)
                    except InvalidScan as exc:
                        self.reject(visit, scan, str(exc), sha)
                        continue
                    images.append(_Pending(visit, scan, sha, vol, 0.0))
            if label_src is not None:
                label = self._check_label(visit, *label_src, images)
                if label is not None:
                    images.append(label)
            if images:
                out.append((visit, images))
        return out

    def _check_label(self, visit, scan, sha, images) -> _Pending | None:
        reference = next((p.volume for p in images), None)
        if reference is None:  # the visit's images are unchanged: read one to compare against
            for other in visit.scans:
                try:
                    reference = read_volume(other.files)
                    check_image(reference, self.params.registry.spacing_range_mm)
                    break
                except InvalidScan:
                    reference = None
        try:
            if reference is None:
                raise InvalidScan("no valid image in this visit to check the label against")
            vol = read_volume(scan.files)
            check_label(vol, reference, self.params.registry.label_values)
        except InvalidScan as exc:
            self.reject(visit, scan, str(exc), sha)
            return None
        return _Pending(visit, scan, sha, vol, 0.0)

    def _create_patient(self, candidates) -> Patient | None:
        """Pick the baseline (earliest visit with a valid image), build its grid, insert the
        patient; None if no visit has a valid image; ``_LostRace`` if another process inserted
        the patient first."""
        pre = self.params.preprocess
        with_images = [(v, p) for v, p in candidates if any(x.scan.modality != LABEL for x in p)]
        if not with_images:
            return None
        visit, files = min(
            with_images, key=lambda vp: (vp[0].date or vp[0].days or 0, vp[0].visit_id)
        )
        images = {p.scan.modality: p.volume for p in files if p.scan.modality != LABEL}
        reference = _reference(list(images), pre.reference_contrasts)
        grid = grid_around(brain_center(images[reference]), pre.spacing_mm, pre.shape)
        patient = Patient(
            pseudonym=self.pseudonym,
            baseline_visit=visit.visit_id,
            baseline_date=visit.date,
            reference=reference,
            grid=grid.to_json(),
        )
        reg = self.params.registry
        try:
            with session_scope(reg.url, reg.sqlite_timeout_s) as session:
                session.add(patient)
                session.flush()
                session.add(PatientId(pseudonym=self.pseudonym, source_id=self.src.patient_id))
        except IntegrityError:
            raise _LostRace from None
        with session_scope(reg.url, reg.sqlite_timeout_s) as session:
            return _load_patient(session, self.pseudonym)

    def _dated(self, patient: Patient, candidates) -> list[_Pending]:
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
                    days = _days(visit, patient.baseline_date, baseline_days)
                old = registered.get(visit.visit_id)
                when = visit.date or visit.days
                if old is not None and (old.date or old.days) != when:
                    raise ValueError(f"visit date {when} differs from its registered date")
                if old is None and when in by_date:
                    raise ValueError(f"duplicate visit: same date as visit {by_date[when]}")
            except ValueError as exc:
                for p in files:
                    self.reject(visit, p.scan, str(exc), p.sha)
                continue
            for p in files:
                p.days = days
            pending.extend(files)
        return pending

    def _process(self, patient: Patient, pending: list[_Pending]) -> None:
        """Align each visit with new files to the baseline and write them on the model grid."""
        if not pending:
            return
        pre = self.params.preprocess
        grid = Grid.from_json(patient.grid)
        fixed = self._baseline_reference(patient, pending, grid)
        mask = fixed > 0.1
        visits = {v.key: v for v in patient.visits}
        by_visit: dict[str, list[_Pending]] = {}
        for p in pending:
            by_visit.setdefault(p.visit.visit_id, []).append(p)
        for visit_id, files in by_visit.items():
            images = {p.scan.modality: p for p in files if p.scan.modality != LABEL}
            transform, mi, reference = self._stored_alignment(visits.get(visit_id), images)
            if visit_id == patient.baseline_visit:
                transform, mi, reference = np.eye(4), None, patient.reference
            elif transform is None:
                if not images:  # a new label for a visit without usable alignment
                    for p in files:
                        self.reject(p.visit, p.scan, "visit has no aligned image", p.sha)
                    continue
                reference = _reference(list(images), [patient.reference, *pre.reference_contrasts])
                try:
                    alignment = rigid_align(fixed, grid, images[reference].volume, pre)
                except AlignmentFailed as exc:
                    for p in files:
                        self.reject(p.visit, p.scan, f"{reference} {exc}", p.sha)
                    continue
                transform, mi = alignment.to_baseline, alignment.mi
            out_dir = pre.out_dir / self.pseudonym / visit_id
            for p in files:
                if p.scan.modality == LABEL:
                    values, _ = resample_to_grid(p.volume, grid, transform, order=0)
                    p.processed = out_dir / f"dseg-{p.sha[:12]}.nii"
                    save_nifti(p.processed, np.rint(values), grid.affine, dtype=np.uint8)
                    quality = None
                else:
                    image, inside = _grid_image(p.volume, grid, transform, self.params)
                    p.processed = out_dir / f"{p.scan.modality}-{p.sha[:12]}.nii"
                    save_nifti(p.processed, image, grid.affine, dtype=np.float32)
                    same = (
                        p.scan.modality == patient.reference and visit_id != patient.baseline_visit
                    )
                    quality = ncc(image, fixed, mask & inside) if same else None
                p.result = {
                    "to_baseline": transform,
                    "reference": reference,
                    "mi": mi,
                    "ncc": quality,
                }
        pending[:] = [p for p in pending if p.processed is not None]

    @staticmethod
    def _stored_alignment(visit: Visit | None, images: dict[str, _Pending]):
        """Reuse a visit's alignment when its reference contrast is unchanged."""
        for scan in visit.scans if visit else []:
            if scan.status == CURRENT and scan.result is not None:
                reference = scan.result.reference
                if reference not in images:
                    transform = np.asarray(json.loads(scan.result.to_baseline))
                    return transform, scan.result.mi, reference
        return None, None, None

    def _baseline_reference(self, patient: Patient, pending: list[_Pending], grid: Grid):
        """The baseline's reference contrast on the grid: new if it is pending, else from disk."""
        for p in pending:
            if p.visit.visit_id == patient.baseline_visit and p.scan.modality == patient.reference:
                return _grid_image(p.volume, grid, np.eye(4), self.params)[0]
        for visit in patient.visits:
            if visit.key == patient.baseline_visit:
                for scan in visit.scans:
                    if scan.status == CURRENT and scan.modality == patient.reference:
                        img = nib.load(scan.result.processed_path)
                        return np.asarray(img.get_fdata(dtype=np.float32))
        raise RuntimeError(f"patient {patient.pseudonym}: baseline reference is not registered")


# ----------------------------------------------------------------------------------- writing
def _write(
    params: Params,
    patient: Patient | None,
    result: PatientResult,
    pending: list[_Pending],
    shas: dict[tuple[str, str], str],
) -> None:
    """One transaction: new visits, scan/label versions, results and rejections."""
    reg = params.registry
    with session_scope(reg.url, reg.sqlite_timeout_s) as session:
        for p in pending:
            visit = _get_visit(session, patient.id, p.visit, p.days)
            model = Label if p.scan.modality == LABEL else Scan
            scope = [model.visit_id == visit.id]
            if model is Scan:
                scope.append(Scan.modality == p.scan.modality)
            if session.scalar(select(model.id).where(*scope, model.sha256 == p.sha)) is not None:
                result.unchanged += 1  # a concurrent registration recorded it first
                continue
            version = (session.scalar(select(func.max(model.version)).where(*scope)) or 0) + 1
            for old in session.scalars(select(model).where(*scope, model.status == CURRENT)):
                old.status = SUPERSEDED
            vol = p.volume
            row = model(
                visit_id=visit.id,
                version=version,
                source_path=str(p.scan.path),
                sha256=p.sha,
                shape=json.dumps(list(vol.data.shape)),
                spacing=json.dumps([round(s, 6) for s in vol.spacing]),
                orientation=vol.orientation,
                status=CURRENT,
            )
            if model is Scan:
                row.modality = p.scan.modality
            session.add(row)
            session.flush()
            session.add(
                Result(
                    scan_id=row.id if model is Scan else None,
                    label_id=row.id if model is Label else None,
                    processed_path=str(p.processed),
                    to_baseline=json.dumps(np.asarray(p.result["to_baseline"]).tolist()),
                    reference=p.result["reference"],
                    mi=p.result["mi"],
                    ncc=p.result["ncc"],
                )
            )
            result.registered += 1
        for r in result.rejected:
            sha = shas.get((r.visit or "", r.path), "")
            exists = session.scalar(
                select(Rejection.id).where(
                    Rejection.source_path == r.path,
                    Rejection.sha256 == sha,
                    Rejection.reason == r.reason,
                )
            )
            if exists is None:
                session.add(
                    Rejection(
                        pseudonym=result.pseudonym,
                        visit=r.visit,
                        kind=r.kind,
                        source_path=r.path,
                        sha256=sha,
                        reason=r.reason,
                    )
                )
                session.flush()


def _get_visit(session: Session, patient_id: int, visit: VisitSource, days: float) -> Visit:
    row = session.scalar(
        select(Visit).where(Visit.patient_id == patient_id, Visit.key == visit.visit_id)
    )
    if row is None:
        row = Visit(patient_id=patient_id, key=visit.visit_id, date=visit.date, days=days)
        session.add(row)
        session.flush()
    return row
