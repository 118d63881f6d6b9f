"""``mtlgen report``: a page per patient under ``<out>/patients/<pseudonym>/`` and the cohort
index ``<out>/index.html``.

A page is rebuilt only when its *fingerprint* changed: the patient's registry rows, the model
(name and version, or checkpoint), the settings the page reads and the page format. Each page
folder keeps ``fingerprint.txt`` and ``summary.json`` (what the index reads), so the index of a
large cohort needs no image. No page may show a source patient id: the build checks every page
against the registry's ids and fails rather than write one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mtlgen.config import Params
from mtlgen.ids import check_token
from mtlgen.io.atomic import write_text_atomic
from mtlgen.report.figures import montage_png, trajectory_png
from mtlgen.report.html import index_page, model_text, patient_page
from mtlgen.report.model import NO_MODEL, ReportModel
from mtlgen.report.records import PatientRows, read_patients, source_ids
from mtlgen.report.summary import due_days, summarise
from mtlgen.track.provenance import dvc_hashes

log = logging.getLogger(__name__)

PAGE_FORMAT = "2"  # bump when a page's content or layout changes: every page is rebuilt
FINGERPRINT, SUMMARY = "fingerprint.txt", "summary.json"


@dataclass(frozen=True)
class ReportResult:
    index: Path
    built: tuple[str, ...]
    unchanged: tuple[str, ...]
    seconds: float


class SourceIdLeak(RuntimeError):
    """A page would show a source patient id."""


def _leak_pattern(ids: set[str]) -> re.Pattern | None:
    if not ids:
        return None
    words = "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True))
    return re.compile(rf"(?<![\w.])(?:{words})(?!\w)")


def _checked(text: str, pattern: re.Pattern | None, where: str) -> str:
    if pattern is not None and (hit := pattern.search(text)):
        raise SourceIdLeak(f"{where}: would show a source patient id (at offset {hit.start()})")
    return text


def fingerprint(rows: PatientRows, params: Params, model: Mapping[str, str] | None) -> str:
    """What a page depends on, hashed."""
    settings = {
        "format": PAGE_FORMAT,
        "model": dict(model or {}),
        "progression": params.progression.model_dump(mode="json"),
        "follow_up_days": params.flows.follow_up_days,
    }
    text = rows.fingerprint() + json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def index_row(rows: PatientRows, summary: dict | None, params: Params) -> dict:
    """One row of the cohort table: from the page's summary where built, else the registry."""
    days, due = due_days(rows, params.flows.follow_up_days)
    row = {
        "patient": rows.pseudonym,
        "status": None,
        "forecast": None,
        "rate": None,
        "doubling": None,
        "visits": len(rows.visits),
        "due": due.isoformat() if due else f"{days:09.1f}",
        "due_text": due.isoformat() if due else f"day {days:.0f}",
        "review": None,
    }
    if summary is not None:
        growth = summary["growth"]
        row.update(
            status=summary["status"],
            forecast=summary["forecast"]["status"] if summary["forecast"] else None,
            rate=round(growth["rate_ml_per_year"], 3) if growth else None,
            doubling=round(summary["doubling_days"]) if summary["doubling_days"] else None,
            review=len(summary["review"]),
        )
    return row


def _provenance(
    rows: PatientRows, model: Mapping[str, str] | None, registry_hash: str, now: str
) -> dict[str, str]:
    return {
        "model": model_text(model),
        "data": f"registry rows sha256 {rows.fingerprint()[:16]}; "
        f"data/registry.sqlite (dvc.lock) {registry_hash}",
        "generated at": now,
    }


def build_page(
    rows: PatientRows,
    folder: Path,
    params: Params,
    model: ReportModel,
    provenance: Mapping[str, str],
    leak: re.Pattern | None,
) -> dict:
    """Write one patient's page, figures and summary into ``folder``; return the summary."""
    summary, arrays = summarise(rows, params, model.predictor(), model.described)
    trajectory_png(summary, folder / "trajectory.png")
    if arrays.visits:
        montage_png(summary, arrays, folder / "montage.png")
    data = summary.to_json()
    page = _checked(
        patient_page(summary, provenance, bool(arrays.visits)), leak, f"page of {rows.pseudonym}"
    )
    write_text_atomic(folder / SUMMARY, _checked(json.dumps(data, indent=1), leak, SUMMARY))
    write_text_atomic(folder / "index.html", page)
    return data


def build_reports(
    params: Params,
    out_dir: Path | str,
    patients: Sequence[str] | None = None,
    model: ReportModel = NO_MODEL,
    force: bool = False,
) -> ReportResult:
    """Build the pages of ``patients`` (pseudonyms; every patient when None) whose fingerprint
    changed (all of them with ``force``), then the cohort index of every patient."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    everyone = read_patients(params.registry)
    names = [r.pseudonym for r in everyone]
    wanted = set(names) if patients is None else set(patients)
    missing = sorted(wanted - set(names))
    if missing:
        raise KeyError(f"patients {missing} are not in the registry")
    leak = _leak_pattern(source_ids(params.registry))
    registry_hash = dvc_hashes(["data/registry.sqlite"]).get("data/registry.sqlite", "untracked")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    built, unchanged, table = [], [], []
    for rows in everyone:
        folder = out_dir / "patients" / check_token(rows.pseudonym, "patient pseudonym")
        summary = None
        if rows.pseudonym in wanted:
            stamp = fingerprint(rows, params, model.described)
            done = folder / FINGERPRINT
            if not force and done.is_file() and done.read_text().strip() == stamp:
                unchanged.append(rows.pseudonym)
            else:
                provenance = _provenance(rows, model.described, registry_hash, now)
                summary = build_page(rows, folder, params, model, provenance, leak)
                write_text_atomic(done, stamp + "\n")
                built.append(rows.pseudonym)
                log.info("report of %s -> %s", rows.pseudonym, folder)
        if summary is None and (folder / SUMMARY).is_file():
            summary = json.loads((folder / SUMMARY).read_text())
        table.append(index_row(rows, summary, params))
    described = model_text(model.described)
    index = _checked(
        index_page(
            table,
            f"Model: {described}. Registry data/registry.sqlite (dvc.lock) {registry_hash}. "
            f"Generated at {now}. Status thresholds: +{params.progression.increase:.0%} / "
            f"-{params.progression.decrease:.0%} (params.yaml progression).",
            params.report.page_size,
        ),
        leak,
        "index",
    )
    path = write_text_atomic(out_dir / "index.html", index)
    return ReportResult(path, tuple(built), tuple(unchanged), time.perf_counter() - start)
