"""Crash recovery at the start of every registration run.

A run killed half-way leaves temporaries of interrupted writes, processed files that no registry
row refers to, and (before patients were inserted with their first files) patients without
visits. ``recover`` removes all three, so a later run starts from a clean state; files a running
registration may still be about to record are kept (``registry.stale_after_s``).

Orphaned processed files are removed only in the folders of this registry's patients: a
registry pointed at a processed folder it does not own (another registry's, e.g. a fresh
registry with the default ``preprocess.out_dir``) must never delete that registry's files. A
killed run's files of a patient never recorded stay; registering the patient again takes them
up (their names are their content's hash).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from mtlgen.config import Params
from mtlgen.io.atomic import remove_stale_temporaries
from mtlgen.registry.record import (
    drop_patients_without_visits,
    patient_pseudonyms,
    processed_paths,
)

log = logging.getLogger(__name__)
_PROCESSED = re.compile(r"^[A-Za-z0-9_-]+-[0-9a-f]{12}\.nii(\.gz)?$")


def recover(params: Params) -> None:
    """Remove stale temporaries and orphaned processed files, and roll back patients without
    visits."""
    reg, out_dir = params.registry, params.preprocess.out_dir
    temporaries = remove_stale_temporaries(out_dir, reg.stale_after_s)
    temporaries += remove_stale_temporaries(reg.key_file.parent, reg.stale_after_s)
    own = patient_pseudonyms(reg)  # before dropping: a bare patient's files are orphans too
    patients = drop_patients_without_visits(reg)
    orphans = _remove_orphans(out_dir, own, processed_paths(reg), reg.stale_after_s)
    if temporaries or patients or orphans:
        log.warning(
            "recovered from an interrupted run: removed %d temporary files, %d processed files "
            "without a registry row and %d patients without visits",
            temporaries,
            orphans,
            patients,
        )


def _remove_orphans(
    out_dir: Path, patients: set[str], referenced: set[str], older_than_s: float
) -> int:
    """Remove processed files (``<out_dir>/<pseudonym>/<visit>/<kind>-<sha>.nii``) of the
    ``patients`` that no result row refers to and that are older than ``older_than_s``."""
    if not out_dir.is_dir():
        return 0
    known = {str(Path(p).resolve()) for p in referenced}
    removed, now = 0, time.time()
    for path in out_dir.glob("*/*/*.nii*"):
        owned = path.parent.parent.name in patients
        if not owned or not _PROCESSED.match(path.name) or str(path.resolve()) in known:
            continue
        try:
            if now - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed
