"""Who a source patient is in the registry: the pseudonym of its source id and, for a new
patient, its baseline visit, reference contrast and model grid."""

from __future__ import annotations

from mtlgen.config import Params
from mtlgen.ids import InvalidIdentifier, check_token, digest
from mtlgen.io.source_types import LABEL, PatientSource, VisitSource
from mtlgen.preprocess.grid import brain_center, grid_around
from mtlgen.register.checks import Pending
from mtlgen.register.process import pick_reference
from mtlgen.registry.pseudonym import pseudonymise
from mtlgen.registry.record import NewPatient


def pseudonym_of(src: PatientSource, key: bytes) -> str:
    """The pseudonym of the source patient id; raises ``InvalidIdentifier`` (whose message
    holds the id redacted by ``key``) for an id that is not a plain token."""
    check_token(src.patient_id, "patient id", private=True, key=key)
    return pseudonymise(src.patient_id, key)


def patient_label(src: PatientSource, key: bytes) -> str:
    """How output names a source patient: its pseudonym, or ``invalid-id-<hash>`` (keyed) for an
    id that is not a plain token."""
    try:
        return pseudonym_of(src, key)
    except InvalidIdentifier:
        return f"invalid-id-{digest(src.patient_id, key)}"


def new_patient(
    src: PatientSource,
    pseudonym: str,
    candidates: list[tuple[VisitSource, list[Pending]]],
    params: Params,
) -> NewPatient | None:
    """Pick the baseline (earliest visit with a valid image) and build its grid; None if no
    visit has a valid image. Inserted later, with its first files (``record_patient``)."""
    pre = params.preprocess
    with_images = [(v, p) for v, p in candidates if any(x.scan.modality != LABEL for x in p)]
    if not with_images:
        return None
    visit, files = min(with_images, key=lambda vp: (vp[0].date or vp[0].days or 0, vp[0].visit_id))
    images = {p.scan.modality: p.volume for p in files if p.scan.modality != LABEL}
    reference = pick_reference(list(images), pre.reference_contrasts)
    grid = grid_around(brain_center(images[reference]), pre.spacing_mm, pre.shape)
    return NewPatient(
        pseudonym,
        src.patient_id,
        baseline_visit=visit.visit_id,
        baseline_date=visit.date,
        reference=reference,
        grid=grid.to_json(),
    )
