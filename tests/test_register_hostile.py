"""Hostile input (issue 26): each case asserts its outcome AND that nothing registered before is
lost. Every test starts from a copy of one registry holding patient 001 of the motion cohort
(``before``) and registers a manifest in its own source folder; the file policy is the default
one (no ``registry.allowed_roots``) unless a test sets it."""

import csv
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from sqlalchemy import func, select
from typer.testing import CliRunner

from mtlgen.cli import app
from mtlgen.config import Params
from mtlgen.io.nifti import save_nifti
from mtlgen.register.run import register_source
from mtlgen.registry.db import session_scope
from mtlgen.registry.models import (
    Label,
    Patient,
    PatientId,
    Rejection,
    RejectionPatient,
    Result,
    Review,
    Scan,
    Visit,
)
from mtlgen.registry.pseudonym import load_key, pseudonymise
from mtlgen.registry.queries import list_patients, list_rejections, list_reviews
from mtlgen.registry.series import load_series
from tests.test_registry_postgres import postgres_url  # noqa: F401 (the server fixture)


def _params(root: Path, url: str | None = None, **registry) -> Params:
    return Params.model_validate(
        {
            "registry": {
                "url": url or f"sqlite:///{root / 'registry.sqlite'}",
                "key_file": str(root / "pseudonym.key"),
                **registry,
            },
            "preprocess": {"out_dir": str(root / "processed")},
        }
    )


def _settings(root: Path, params: Params) -> Path:
    """A params.yaml for the CLI with ``params``' registry and processed folder."""
    reg = params.registry
    roots = ", ".join(str(r) for r in reg.allowed_roots)
    path = root / "params.yaml"
    path.write_text(
        f"registry:\n  url: {reg.url}\n  key_file: {reg.key_file}\n"
        f"  allowed_roots: [{roots}]\n  max_file_mb: {reg.max_file_mb}\n"
        f"preprocess:\n  out_dir: {params.preprocess.out_dir}\n"
    )
    return path


def _write_csv(path: Path, rows: list[dict]) -> Path:
    fields = ["patient", "visit", "date", "modality", "image", "label"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{"label": "", **r} for r in rows])
    return path


def _local_rows(rows: list[dict], src: Path, patient: str | None = None) -> list[dict]:
    """``rows`` with their files copied into ``src`` (named by row) and paths made relative."""
    out = []
    for row in rows:
        row = dict(row)
        for column in ("image", "label"):
            if row.get(column):
                name = Path(row[column]).name
                target = src / name
                if not target.exists():
                    shutil.copy(row[column], target)
                row[column] = name
        out.append({**row, "patient": patient or row["patient"]})
    return out


def _snapshot(url: str) -> set[tuple]:
    """Every registered version with its result, and every patient."""
    with session_scope(url) as s:
        rows = {("patient", p) for p in s.scalars(select(Patient.pseudonym))}
        for model, owner in ((Scan, Result.scan_id), (Label, Result.label_id)):
            query = select(model, Result).join(Result, owner == model.id)
            for row, res in s.execute(query):
                rows.add((row.source_path, row.sha256, row.version, row.status, res.processed_path))
    return rows


def _assert_kept(url: str, before: set[tuple]) -> None:
    """Nothing registered before is lost or changed, and its processed files still exist."""
    after = _snapshot(url)
    assert before <= after, sorted(before - after)
    assert all(Path(r[4]).exists() for r in before if r[0] != "patient")


@pytest.fixture(scope="module")
def template(tmp_path_factory, motion_cohort, manifest_rows):
    """A registry holding patient 001 (all visits) from a manifest in its own folder."""
    root = tmp_path_factory.mktemp("hostile-template")
    src = root / "src"
    src.mkdir()
    params = _params(root)
    manifest = _write_csv(
        src / "first.csv", _local_rows(manifest_rows(motion_cohort, {"001"}), src)
    )
    result = register_source(manifest, params, progress=False)
    assert result.rejected == [] and result.registered > 0
    assert result.needs_review == 0  # a normal cohort passes the quality gate
    return root


@pytest.fixture
def state(template, tmp_path):
    """(root, params, snapshot): a fresh copy of the template registry for one test (its rows
    still refer to the template's processed files)."""
    root = tmp_path / "state"
    shutil.copytree(template, root, ignore=shutil.ignore_patterns("processed"))
    (root / "src" / "first.csv").unlink()
    params = _params(root)
    return root, params, _snapshot(params.registry.url)


def _noise(like: Path, out: Path, smooth: float = 0.0, seed: int = 0) -> Path:
    """An image with ``like``'s grid holding uniform noise (smoothed by ``smooth`` voxels)."""
    img = nib.load(like)
    noise = np.random.default_rng(seed).uniform(0, 1000, img.shape).astype(np.float32)
    if smooth:
        noise = ndimage.gaussian_filter(noise, smooth)
    return save_nifti(out, noise, img.affine)


def _rows_002(motion_cohort, manifest_rows, visits: int | None = None) -> list[dict]:
    rows = manifest_rows(motion_cohort, {"002"})
    keep = sorted({r["visit"] for r in rows})[:visits]
    return [r for r in rows if r["visit"] in keep]


def _reviews(url: str) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(Review))


# ------------------------------------------------------------------------- 1. quality gate
def test_noise_duplicate_before_the_baseline_keeps_the_real_scan(
    state, motion_cohort, manifest_rows
):
    root, params, before = state
    src = root / "src"
    rows = _local_rows(_rows_002(motion_cohort, manifest_rows), src)
    real = next(r for r in rows if r["visit"] == "01" and r["modality"] == "T1w")
    noise = {**real, "image": _noise(src / real["image"], src / "noise.nii.gz").name}
    result = register_source(_write_csv(src / "m.csv", [noise, *rows]), params, progress=False)
    (rejected,) = result.rejected
    assert rejected.line == 2 and rejected.path.endswith("noise.nii.gz")
    assert rejected.reason.startswith("duplicate T1w image in this visit: kept manifest line ")
    assert "which passes the checks; this one does not look like a head scan" in rejected.reason
    assert result.needs_review == 0 and _reviews(params.registry.url) == 0
    pseudonym = pseudonymise("002", load_key(params.registry.key_file))
    with session_scope(params.registry.url) as s:
        baseline = s.execute(
            select(Scan.source_path, Patient.reference)
            .join(Visit, Scan.visit_id == Visit.id)
            .join(Patient, Patient.id == Visit.patient_id)
            .where(Patient.pseudonym == pseudonym, Visit.key == Patient.baseline_visit)
            .where(Scan.modality == "T1w")
        ).one()
        nccs = s.scalars(
            select(Result.ncc)
            .join(Scan, Result.scan_id == Scan.id)
            .join(Visit, Scan.visit_id == Visit.id)
            .join(Patient, Patient.id == Visit.patient_id)
            .where(Patient.pseudonym == pseudonym, Result.ncc.is_not(None))
        ).all()
    assert baseline == (str(src / real["image"]), "T1w")
    assert nccs and min(nccs) > 0.9, nccs
    _assert_kept(params.registry.url, before)


def test_implausible_follow_up_is_held_for_review_then_settled(state, motion_cohort, manifest_rows):
    """Smooth noise passes the head check (coherent, head-sized) but not the alignment gate."""
    root, params, before = state
    src = root / "src"
    rows = _local_rows(_rows_002(motion_cohort, manifest_rows, visits=2), src)
    follow = [r for r in rows if r["visit"] == "02"]
    for r in follow:
        if r["modality"] == "T1w":
            r["image"] = _noise(src / r["image"], src / "smooth.nii.gz", smooth=2.0).name
    result = register_source(_write_csv(src / "m.csv", rows), params, progress=False)
    held = len(follow) + len({r["label"] for r in follow if r["label"]})
    assert result.rejected == [] and result.needs_review == held
    reviews = list_reviews(params.registry)
    assert {r["visit"] for r in reviews} == {"02"} and len(reviews) == held
    assert all("implausible similarity to the baseline" in r["reason"] for r in reviews)
    assert "registry.review_min_ncc" in reviews[0]["reason"]
    pseudonym = reviews[0]["patient"]

    def visits() -> list[str]:
        series = {s.patient: s for s in load_series(params.registry.url)}
        return [v.visit for v in series[pseudonym].visits]

    assert visits() == ["01"]  # kept out of training and prediction
    settings = _settings(root, params)
    runner = CliRunner()
    listed = runner.invoke(app, ["-p", str(settings), "registry", "review"])
    assert listed.exit_code == 0 and listed.output.count("needs_review") == held
    ids = [r["id"] for r in reviews]
    both = runner.invoke(app, ["-p", str(settings), "registry", "review", str(ids[0])])
    assert both.exit_code == 2 and "exactly one of --accept or --reject" in both.output
    for review_id in ids:
        done = runner.invoke(
            app, ["-p", str(settings), "registry", "review", str(review_id), "--reject"]
        )
        assert done.exit_code == 0 and done.output.strip() == f"review {review_id}: rejected"
    assert visits() == ["01"] and list_reviews(params.registry) == []
    for review_id in ids:
        runner.invoke(app, ["-p", str(settings), "registry", "review", str(review_id), "--accept"])
    assert visits() == ["01", "02"]
    unknown = runner.invoke(app, ["-p", str(settings), "registry", "review", "999", "--accept"])
    assert unknown.exit_code == 1 and "no review 999" in unknown.output
    _assert_kept(params.registry.url, before)


def test_noise_baseline_is_held_with_its_follow_ups(state, motion_cohort, manifest_rows):
    root, params, before = state
    src = root / "src"
    rows = _local_rows(_rows_002(motion_cohort, manifest_rows, visits=2), src)
    for r in rows:
        if r["visit"] == "01" and r["modality"] == "T1w":
            r["image"] = _noise(src / r["image"], src / "noise.nii.gz").name
    result = register_source(_write_csv(src / "m.csv", rows), params, progress=False)
    reviews = {(r["visit"], r["contrast"]): r["reason"] for r in list_reviews(params.registry)}
    assert "neighbouring voxels correlate" in reviews[("01", "T1w")]
    follow_t1 = reviews[("02", "T1w")]
    assert "implausible similarity to the baseline" in follow_t1, follow_t1
    assert result.needs_review == len(reviews) and result.rejected == []
    _assert_kept(params.registry.url, before)


# ------------------------------------------------------------------------ 5. file policy
def _rejected_fast(params: Params, manifest: Path, limit_s: float = 1.0):
    start = time.monotonic()
    result = register_source(manifest, params, progress=False)
    elapsed = time.monotonic() - start
    assert elapsed < limit_s, f"took {elapsed:.2f} s"
    return result


def test_dev_zero_and_a_fifo_are_refused_within_a_second(state):
    root, params, before = state
    src = root / "src"
    fifo = src / "pipe.nii.gz"
    os.mkfifo(fifo)
    rows = [
        {"patient": "z1", "visit": "01", "date": "2020-01-01", "modality": "T1w", "image": path}
        for path in ("/dev/zero", fifo.name)
    ]
    rows[1]["patient"] = "z2"
    manifest = _write_csv(src / "m.csv", rows)
    zero, pipe = _rejected_fast(params, manifest).rejected
    assert (
        zero.reason.startswith("outside the source folder")
        and "registry.allowed_roots" in zero.reason
    )
    assert pipe.reason == "a FIFO: expected a regular file or a folder of DICOM files"
    in_dev = _params(root, allowed_roots=["/dev"])
    zero, _ = _rejected_fast(in_dev, manifest).rejected
    assert zero.reason == "a character device: expected a regular file or a folder of DICOM files"
    _assert_kept(params.registry.url, before)


def test_paths_outside_the_source_folder_are_refused_unread(state, motion_cohort):
    root, params, before = state
    src = root / "src"
    outside = root / "elsewhere"
    outside.mkdir()
    image = motion_cohort / "sub-003/ses-01/anat/sub-003_ses-01_T1w.nii.gz"
    shutil.copy(image, outside / "t1.nii.gz")
    (src / "link.nii.gz").symlink_to(outside / "t1.nii.gz")
    (src / "notdicom").mkdir()
    (src / "notdicom" / "readme.txt").write_text("not a scan\n")
    paths = ["/etc/shadow", "/etc", "../elsewhere/t1.nii.gz", "link.nii.gz", "notdicom"]
    rows = [
        {"patient": f"o{i}", "visit": "01", "date": "2020-01-01", "modality": "T1w", "image": p}
        for i, p in enumerate(paths)
    ]
    manifest = _write_csv(src / "m.csv", rows)
    result = _rejected_fast(params, manifest)
    reasons = [r.reason for r in result.rejected]
    assert all(r.startswith("outside the source folder") for r in reasons[:4]), reasons
    assert all("registry.allowed_roots (params.yaml)" in r for r in reasons[:4])
    assert reasons[4].startswith("folder holds no DICOM files")
    with session_scope(params.registry.url) as s:
        shas = s.scalars(select(Rejection.sha256).where(Rejection.reason.like("outside%"))).all()
    assert shas == ["", "", ""]  # never read, never hashed (the link resolves to ../elsewhere)
    allowed = _params(root, allowed_roots=[str(outside)])
    again = register_source(manifest, allowed, progress=False)
    assert again.registered == 2  # ../elsewhere/t1.nii.gz and the link (o2 and o3)
    capped = _params(root, max_file_mb=0.01, allowed_roots=[str(outside)])
    big = {**rows[0], "patient": "big", "image": str(outside / "t1.nii.gz")}
    (refused,) = register_source(
        _write_csv(src / "big.csv", [big]), capped, progress=False
    ).rejected
    assert refused.reason.startswith("too large") and "registry.max_file_mb" in refused.reason
    _assert_kept(params.registry.url, before)


# ---------------------------------------------------------------------- 6. private output
SECRET = "ID123SECRET"


def test_output_shows_pseudonyms_and_lines_never_source_ids_or_paths(
    state, motion_cohort, manifest_rows, caplog
):
    root, params, before = state
    src = root / "src"
    rows = []
    for r in _rows_002(motion_cohort, manifest_rows, visits=1):
        name = f"{SECRET}_{r['modality']}.nii.gz"
        shutil.copy(r["image"], src / name)
        rows.append({**r, "patient": SECRET, "image": name, "label": ""})
    raw = (src / f"{SECRET}_T1w.nii.gz").read_bytes()
    (src / f"{SECRET}_T2w.nii.gz").write_bytes(raw[: len(raw) // 2])
    rows.append({**rows[0], "modality": "T2w", "image": f"{SECRET}_T2w.nii.gz"})
    (src / "bad.nii.gz").write_text("not an image\n")
    for pid in ("pat 1", "../../etc"):
        rows.append({**rows[0], "patient": pid, "image": "bad.nii.gz"})
    manifest = _write_csv(src / "m.csv", rows)
    settings = _settings(root, params)
    runner = CliRunner()
    with caplog.at_level("INFO"):
        run = runner.invoke(app, ["-p", str(settings), "register", str(manifest)])
    assert run.exit_code == 3, run.output
    pseudonym = pseudonymise(SECRET, load_key(params.registry.key_file))
    listed = runner.invoke(app, ["-p", str(settings), "registry", "rejections"])
    for text in (run.output, caplog.text, listed.output):
        for secret in (SECRET, "pat 1", "../../etc", str(src)):
            assert secret not in text, (secret, text)
    assert pseudonym in run.output and pseudonym in caplog.text and "invalid-id-" in run.output
    assert "unreadable or truncated" in run.output and "patient id <5 chars, hash" in run.output
    lines = {r["reason"].split(" is not")[0]: r["line"] for r in list_rejections(params.registry)}
    assert set(lines.values()) == {"4", "5", "6"}
    with session_scope(params.registry.url) as s:
        stored = [
            *s.scalars(select(Rejection.reason)),
            *s.scalars(select(RejectionPatient.patient)),
        ]
    assert not [t for t in stored if SECRET in t or "pat 1" in t or "../../etc" in t]
    shown = runner.invoke(app, ["-p", str(settings), "register", str(manifest), "--show-sources"])
    assert f"{SECRET}_T2w.nii.gz" in shown.output  # long paths keep their end
    assert "bad.nii.gz" not in listed.output
    listed = runner.invoke(app, ["-p", str(settings), "registry", "rejections", "--show-sources"])
    assert "bad.nii.gz" in listed.output
    _assert_kept(params.registry.url, before)


# ------------------------------------------------- 7. a bad file shared by many patients
def test_one_bad_file_named_by_200_patients_is_one_rejection_naming_all(state):
    root, params, before = state
    src = root / "src"
    (src / "shared.nii.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 64)
    rows = [
        {"patient": f"q{i:03d}", "visit": "01", "date": "2020-01-01", "modality": "T1w"}
        for i in range(200)
    ]
    manifest = _write_csv(src / "m.csv", [{**r, "image": "shared.nii.gz"} for r in rows])
    result = register_source(manifest, params, progress=False)
    assert len(result.rejected) == 200

    def counts() -> tuple[int, int]:
        with session_scope(params.registry.url) as s:
            return (
                s.scalar(select(func.count()).select_from(Rejection)),
                s.scalar(select(func.count(func.distinct(RejectionPatient.patient)))),
            )

    assert counts() == (1, 200)
    (row,) = list_rejections(params.registry)
    assert row["patients"] == 200 and row["patient"].endswith("(+197)")
    register_source(manifest, params, progress=False)
    assert counts() == (1, 200)  # a re-run records nothing new
    listed = CliRunner().invoke(app, ["-p", str(_settings(root, params)), "registry", "rejections"])
    assert listed.output.splitlines()[1].split()[0] == "200"
    _assert_kept(params.registry.url, before)


# --------------------------------------------------------------------- 3. crash recovery
def _killed_run(settings: Path, manifest: Path, patch: str) -> None:
    """``mtlgen register`` in a subprocess that ``patch`` kills (SIGKILL) half-way."""
    script = textwrap.dedent(
        f"""
        import os, signal
        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        {patch}
        from mtlgen.cli import app
        app(["-p", {str(settings)!r}, "register", {str(manifest)!r}])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr


def _empty_patients(url: str) -> int:
    with session_scope(url) as s:
        with_visits = select(Visit.patient_id)
        return s.scalar(select(func.count(Patient.id)).where(Patient.id.not_in(with_visits)))


def test_kill_during_a_patient_leaves_no_patient_without_visits(
    state, motion_cohort, manifest_rows
):
    root, params, before = state
    src = root / "src"
    url = params.registry.url
    manifest = _write_csv(
        src / "m.csv", _local_rows(_rows_002(motion_cohort, manifest_rows, visits=2), src)
    )
    settings = _settings(root, params)
    _killed_run(settings, manifest, "import mtlgen.register.run as run; run.record_patient = die")
    processed = params.preprocess.out_dir
    orphans = sorted(processed.rglob("*.nii"))
    assert orphans and _snapshot(url) == before  # files written, no patient row
    with session_scope(url) as s:  # what a kill left with earlier versions: a bare patient
        s.add(Patient(pseudonym="pbare", baseline_visit="01", reference="T1w", grid="{}"))
        s.flush()
        s.add(PatientId(pseudonym="pbare", source_id="bare"))
    assert _empty_patients(url) == 1
    listed = CliRunner().invoke(app, ["-p", str(settings), "registry", "patients"])
    assert "pbare" not in listed.output and len(listed.output.splitlines()) == 2
    result = register_source(manifest, params, progress=False)  # recovers, then registers
    assert _empty_patients(url) == 0 and result.registered > 0 and result.rejected == []
    with session_scope(url) as s:
        assert s.scalar(select(func.count()).select_from(PatientId)) == 2
    referenced = {Path(r[4]) for r in _snapshot(url) if r[0] != "patient"}
    assert set(orphans) <= referenced  # the killed run's files were taken up again
    own = orphans[0].parent.parent  # a registered patient's folder
    stray = own / "09" / f"T1w-{'0' * 12}.nii"
    foreign = processed / "pgone" / "01" / f"T1w-{'0' * 12}.nii"  # no patient of this registry
    for path in (stray, foreign):
        path.parent.mkdir(parents=True)
        shutil.copy(orphans[0], path)
    register_source(manifest, params, progress=False)
    assert stray.exists()  # young: a running registration may be about to record it
    register_source(manifest, _params(root, stale_after_s=0), progress=False)
    assert not stray.exists() and foreign.exists()  # another registry's files are never touched
    _assert_kept(url, before)


def test_kill_during_a_write_leaves_no_temporary_file(state, motion_cohort, manifest_rows):
    root, params, before = state
    src = root / "src"
    manifest = _write_csv(
        src / "m.csv", _local_rows(_rows_002(motion_cohort, manifest_rows, visits=1), src)
    )
    settings = _settings(root, params)
    patch = (
        "import nibabel\n"
        "def partial(img, path):\n"
        "    open(path, 'wb').write(b'partial')\n"
        "    die()\n"
        "nibabel.save = partial"
    )
    _killed_run(settings, manifest, textwrap.indent(patch, " " * 8).strip())
    processed = params.preprocess.out_dir
    (left,) = processed.rglob(".*.tmp*")
    old = left.parent / f".T1w-{'1' * 12}.nii.{'a' * 12}.tmp.nii"  # an older version's, 2 h old
    young = left.parent / f".T1w-{'2' * 12}.nii.{'b' * 12}.tmp.nii"
    for path in (old, young):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    result = register_source(manifest, params, progress=False)
    assert result.rejected == [] and result.registered > 0
    assert sorted(processed.rglob(".*.tmp*")) == [young]  # its writer may still be running
    _assert_kept(params.registry.url, before)


# ------------------------------------------------------------ an older registry still opens
def test_a_registry_from_before_issue_26_opens_and_takes_new_rows(state):
    root, params, before = state
    with sqlite3.connect(root / "registry.sqlite") as db:  # the schema before issue 26
        for table in ("reviews", "rejection_patients"):
            db.execute(f"DROP TABLE {table}")
    assert [p["visits"] > 0 for p in list_patients(params.registry)] == [True]
    src = root / "src"
    (src / "bad.nii.gz").write_text("no image\n")
    row = {"patient": "r1", "visit": "01", "date": "2020-01-01", "modality": "T1w"}
    register_source(
        _write_csv(src / "m.csv", [{**row, "image": "bad.nii.gz"}]), params, progress=False
    )
    (rejection,) = list_rejections(params.registry)
    assert rejection["patients"] == 1 and list_reviews(params.registry) == []
    _assert_kept(params.registry.url, before)


# ------------------------------------------------------------- 2. concurrent registrations
@pytest.mark.integration
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_two_processes_register_valid_and_invalid_rows_once(
    backend, request, tmp_path, motion_cohort, manifest_rows
):
    """Two `mtlgen register` at once on 200 rows with invalid patient ids (one file) and a valid
    patient: both exit normally (status: rejected files, capped at 100), nothing twice."""
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    src = tmp_path / "src"
    src.mkdir()
    params = _params(tmp_path, url)
    url = params.registry.url
    first = [r for r in manifest_rows(motion_cohort, {"003"}) if r["visit"] == "01"]
    register_source(_write_csv(src / "first.csv", _local_rows(first, src)), params, progress=False)
    before = _snapshot(url)
    rows = _local_rows(_rows_002(motion_cohort, manifest_rows, visits=2), src)
    (src / "bad.nii.gz").write_text("no image\n")
    invalid = {"visit": "01", "date": "2020-01-01", "modality": "T1w", "image": "bad.nii.gz"}
    rows += [{**invalid, "patient": f"pat {i}"} for i in range(200)]
    manifest = _write_csv(src / "race.csv", rows)
    settings = _settings(tmp_path, params)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mtlgen", "-p", str(settings), "register", str(manifest)]
    procs = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [100, 100], outputs
    assert all("Traceback" not in o and "rejected 200 files of 201 patients" in o for o in outputs)
    with session_scope(url) as s:
        count = {
            m.__tablename__: s.scalar(select(func.count()).select_from(m))
            for m in (Patient, PatientId, Scan, Rejection, RejectionPatient)
        }
        dupes = s.execute(
            select(Scan.visit_id, Scan.modality, func.count())
            .group_by(Scan.visit_id, Scan.modality)
            .having(func.count() > 1)
        ).all()
    images = len([r for r in rows if not r["patient"].startswith("pat ")])
    assert count == {
        "patients": 2,
        "patient_ids": 2,
        "scans": len(first) + images,
        "rejections": 200,
        "rejection_patients": 200,
    }
    assert dupes == []
    _assert_kept(url, before)


@pytest.mark.slow
def test_a_differently_built_cohort_passes_the_quality_gate(tmp_path):
    """Other orientations, anisotropic 1.2 x 1.2 x 2.5 mm voxels, int16 and float32, missing
    contrasts: the default thresholds hold nothing back (measured NCC 0.93-0.95, MI 0.93-1.11)."""
    from mtlgen.config import SynthConfig
    from mtlgen.synth.cohort import write_cohort

    cohort = SynthConfig(
        patients=3,
        visits_min=2,
        visits_max=3,
        spacing_mm=(1.2, 1.2, 2.5),
        orientation=["LPS", "LAS", "PIR"],
        dtype=["int16", "float32"],
        missing_contrast_prob=0.5,
        workers=1,
    )
    write_cohort(cohort, 3, tmp_path / "bids", progress=False)
    result = register_source(tmp_path / "bids", _params(tmp_path), progress=False)
    assert result.rejected == [] and result.registered > 0
    assert result.needs_review == 0
