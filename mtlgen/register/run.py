"""Register a patient's scan series: record every file, put accepted scans on the model grid and
align every follow-up to the patient's baseline.

``register_patient`` is the unit of work (what a Prefect task calls per patient);
``register_source`` discovers a source and loops over its patients with a progress bar.

Idempotent: a file whose content (sha256) is already registered for its visit and contrast is
``unchanged``; a changed file becomes the next version and the old one is kept as superseded.
Bad input is *recorded and returned* as a rejection; a valid file the quality gate doubts
(``mtlgen.register.quality``) is registered as ``needs_review``; ``OSError`` (I/O trouble worth a
retry) propagates. Heavy work runs outside any transaction; the writes of one patient, a new
patient included, are one short transaction (``mtlgen.registry.record``), made race-free by
unique constraints: a registration that loses a race starts over against the registry as the
other process left it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from tqdm import tqdm

from mtlgen.config import Params
from mtlgen.ids import InvalidIdentifier
from mtlgen.io.source_types import PatientSource
from mtlgen.io.sources import discover
from mtlgen.register.checks import check_visits, date_visits, known_versions
from mtlgen.register.identity import new_patient, patient_label, pseudonym_of
from mtlgen.register.process import process, scan_record
from mtlgen.register.recovery import recover
from mtlgen.register.results import Ledger, PatientResult, SourceResult
from mtlgen.registry.pseudonym import load_key
from mtlgen.registry.record import load_patient, record_patient

log = logging.getLogger(__name__)
_MAX_ATTEMPTS = 5


def register_source(source: Path | str, params: Params, progress: bool = True) -> SourceResult:
    """Discover ``source``, recover from crashed runs (``recover``) and register each patient
    (see ``register_patient``); a bad source changes nothing."""
    patients = discover(source)
    recover(params)
    key = load_key(params.registry.key_file)
    log.info("registering %d patients into %s", len(patients), _safe_url(params))
    results = []
    for patient in tqdm(patients, desc="registering", unit="patient", disable=not progress):
        results.append(register_patient(patient, params, key))
    return SourceResult(results)


def _safe_url(params: Params) -> str:
    return make_url(params.registry.url).render_as_string(hide_password=True)


def register_patient(src: PatientSource, params: Params, key: bytes | None = None) -> PatientResult:
    """Register one patient's files: validate, record, preprocess and align.

    Returns the counts of registered / needs-review / unchanged files and the rejections (also
    recorded in the registry). Raises ``OSError`` on I/O failures, which a caller may retry.
    """
    key = key if key is not None else load_key(params.registry.key_file)
    try:
        pseudonym = pseudonym_of(src, key)
    except InvalidIdentifier as exc:
        ledger = Ledger(PatientResult(None, label=patient_label(src, key)))
        for scan in src.files():
            ledger.reject(None, scan, str(exc))
        record_patient(params.registry, None, [], ledger.rejections())
        return ledger.result
    return _Registration(src, params, pseudonym, key).run()


class _Registration:
    """The state of registering one patient (one instance per attempt)."""

    def __init__(
        self, src: PatientSource, params: Params, pseudonym: str, key: bytes, attempt: int = 1
    ) -> None:
        self.src, self.params, self.pseudonym, self.key = src, params, pseudonym, key
        self.attempt = attempt
        self.ledger = Ledger(PatientResult(pseudonym, label=pseudonym))

    def run(self) -> PatientResult:
        reg, ledger = self.params.registry, self.ledger
        patient = load_patient(reg, self.pseudonym)
        candidates = check_visits(self.src, self.params, known_versions(patient), ledger, self.key)
        new = None
        if patient is None and candidates:
            new = new_patient(self.src, self.pseudonym, candidates, self.params)
            patient = new.transient() if new is not None else None
        pending = date_visits(patient, candidates, ledger) if patient else []
        if patient is not None:
            pending = process(patient, pending, self.params, ledger)
        scans = [scan_record(p) for p in pending]
        try:
            done = record_patient(
                reg, patient.id if patient else None, scans, ledger.rejections(), new
            )
        except IntegrityError:  # a concurrent registration wrote the same rows first
            return self._again()
        result = ledger.result
        result.registered += done.registered
        result.unchanged += done.unchanged
        result.needs_review += sum(1 for p in pending if p.review is not None)
        log.info(
            "patient %s: %d registered (%d held for review), %d unchanged, %d rejected",
            self.pseudonym,
            result.registered,
            result.needs_review,
            result.unchanged,
            len(result.rejected),
        )
        return result

    def _again(self) -> PatientResult:
        """Start over against the registry as another process left it (bounded)."""
        if self.attempt >= _MAX_ATTEMPTS:
            raise RuntimeError(f"patient {self.pseudonym}: gave up after {self.attempt} races")
        log.info("patient %s: concurrent registration detected, starting over", self.pseudonym)
        return _Registration(
            self.src, self.params, self.pseudonym, self.key, self.attempt + 1
        ).run()
