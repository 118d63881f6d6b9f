"""Bad input: one batch (a CSV manifest) mixes good patients with every kind of bad file, id and
date. Each bad case is rejected with its one-line reason, the good scans still register, the
exit status counts the failures and a summary table is printed."""

import csv
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from mtlgen.cli import app
from mtlgen.io.nifti import save_nifti
from mtlgen.register.run import register_source
from mtlgen.registry.db import session_scope
from mtlgen.registry.models import Rejection, Scan

# case -> (file name used by the case, fragment of the recorded reason)
CASES = {
    "truncated": ("truncated.nii.gz", "unreadable or truncated"),
    "not_nifti": ("notes.nii.gz", "not a NIfTI or DICOM file"),
    "two_d": ("slice.nii.gz", "2-D image"),
    "four_d": ("series4d.nii.gz", "4-D image"),
    "nan": ("nan.nii.gz", "NaN/Inf voxels"),
    "constant": ("constant.nii.gz", "all voxels have the same value"),
    "singular_affine": ("singular.nii.gz", "singular or non-finite affine"),
    "absurd_spacing": ("huge_voxels.nii.gz", "absurd voxel spacing"),
    "label_shape": ("label_shape.nii.gz", "label shape"),
    "label_affine": ("label_affine.nii.gz", "label affine does not match"),
    "label_values": ("label_values.nii.gz", "label values [7] outside the declared set"),
    "duplicate_visit": ("dup_visit.nii.gz", "duplicate visit: same date as visit 02"),
    "missing_date": ("no_date.nii.gz", "missing visit date"),
    "bad_date": ("bad_date.nii.gz", "unparsable visit date '2019-13-45'"),
    "before_baseline": ("early.nii.gz", "follow-up dated before baseline"),
    "patient_slash": ("pid_slash.nii.gz", "patient id <3 chars, hash "),
    "patient_dotdot": ("pid_dotdot.nii.gz", "patient id <2 chars, hash "),
    "patient_space": ("pid_space.nii.gz", "patient id <3 chars, hash "),
    "patient_control": ("pid_ctrl.nii.gz", "patient id <3 chars, hash "),
    "visit_slash": ("visit_slash.nii.gz", "visit id <4 chars, hash "),
    "alignment_fails": ("tiny.nii.gz", "T1w rigid alignment failed: The number of pixels"),
}


def _write_raw_nifti(path, data, affine):
    """Save with exactly this sform (no qform), bypassing nibabel's affine checks."""
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_sform(affine, code=2)
    img.header.set_qform(None, code=0)
    img.update_header = lambda: None
    nib.save(img, path)


def _make_bad_files(src_image, src_label, folder):
    img = nib.load(src_image)
    data, affine = np.asarray(img.dataobj), img.affine
    label = np.asarray(nib.load(src_label).dataobj)
    f = {name: folder / fname for name, (fname, _) in CASES.items()}
    raw = src_image.read_bytes()
    f["truncated"].write_bytes(raw[: len(raw) // 2])
    f["not_nifti"].write_text("visit notes, not an image\n")
    save_nifti(f["two_d"], data[:, :, data.shape[2] // 2], affine)
    save_nifti(f["four_d"], np.stack([data] * 3, axis=-1), affine)
    nan = data.astype(np.float32)
    nan[5, 5, 5] = np.nan
    save_nifti(f["nan"], nan, affine)
    save_nifti(f["constant"], np.full_like(data, 100), affine)
    _write_raw_nifti(f["singular_affine"], data, np.diag([4.0, 4.0, 0.0, 1.0]))
    save_nifti(f["absurd_spacing"], data, np.diag([50.0, 50.0, 50.0, 1.0]))
    tiny = np.arange(27, dtype=np.int16).reshape(3, 3, 3)  # valid, but too small to align
    save_nifti(f["alignment_fails"], tiny, np.diag([2.0, 2.0, 2.0, 1.0]))
    save_nifti(f["label_shape"], label[:-2], affine, dtype=np.uint8)
    shifted = affine.copy()
    shifted[:3, 3] += 6.0
    save_nifti(f["label_affine"], label, shifted, dtype=np.uint8)
    sevens = label.copy()
    sevens[label == 2] = 7
    save_nifti(f["label_values"], sevens, affine, dtype=np.uint8)
    copies = ["duplicate_visit", "missing_date", "bad_date", "before_baseline"]
    copies += [n for n in CASES if n.startswith(("patient_", "visit_"))]
    for name in copies:
        shutil.copy(src_image, f[name])
    return f


@pytest.fixture(scope="module")
def bad_batch(tmp_path_factory, motion_cohort, register_params, manifest_rows):
    root = tmp_path_factory.mktemp("bad")
    params = register_params(root)
    good = manifest_rows(motion_cohort, {"001"})
    early = [r for r in manifest_rows(motion_cohort, {"003"}) if r["visit"] == "01"]
    seed_csv = root / "seed.csv"  # patient 003's baseline registered before the batch arrives
    _write_csv(seed_csv, early)
    register_source(seed_csv, params, progress=False)

    img = motion_cohort / "sub-001/ses-01/anat/sub-001_ses-01_T1w.nii.gz"
    lab = motion_cohort / "derivatives/labels/sub-001/ses-01/anat/sub-001_ses-01_dseg.nii.gz"
    f = _make_bad_files(img, lab, root)
    date_02 = next(r["date"] for r in good if r["visit"] == "02")

    def row(patient, visit, date, path, label="", modality="T1w"):
        rec = {"patient": patient, "visit": visit, "date": date, "modality": modality}
        return {**rec, "image": str(path), "label": str(label)}

    bad = [
        row("B", f"{i:02d}", f"2020-01-{i:02d}", f[n])
        for i, n in enumerate(
            [
                "truncated",
                "not_nifti",
                "two_d",
                "four_d",
                "nan",
                "constant",
                "singular_affine",
                "absurd_spacing",
            ],
            start=1,
        )
    ]
    bad += [
        row("L", f"{i:02d}", f"2020-02-{i:02d}", img, f[n])
        for i, n in enumerate(["label_shape", "label_affine", "label_values"], start=1)
    ]
    bad += [
        row("001", "99", date_02, f["duplicate_visit"]),
        row("001", "77", "", f["missing_date"]),
        row("001", "78", "2019-13-45", f["bad_date"]),
        row("003", "00", "2000-01-01", f["before_baseline"]),
        row("a/b", "01", "2020-01-01", f["patient_slash"]),
        row("..", "01", "2020-01-01", f["patient_dotdot"]),
        row("a b", "01", "2020-01-01", f["patient_space"]),
        row("a\x01b", "01", "2020-01-01", f["patient_control"]),
        row("001", "../x", "2030-01-01", f["visit_slash"]),
        row("001", "88", "2030-06-01", f["alignment_fails"]),
    ]
    batch = root / "batch.csv"
    _write_csv(batch, good + early + bad)
    settings = root / "params.yaml"
    settings.write_text(
        f"registry:\n  url: {params.registry.url}\n  key_file: {params.registry.key_file}\n"
        f"  allowed_roots: [{params.registry.allowed_roots[0]}]\n"
        f"preprocess:\n  out_dir: {params.preprocess.out_dir}\n"
    )
    run = CliRunner().invoke(app, ["-p", str(settings), "register", str(batch)])
    return params, run, good, f


def _write_csv(path, rows):
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_case_is_rejected_with_its_reason(bad_batch, case):
    params, _, _, files = bad_batch
    with session_scope(params.registry.url) as s:
        reasons = s.scalars(
            select(Rejection.reason).where(Rejection.source_path == str(files[case]))
        ).all()
    fragment = CASES[case][1]
    assert len(reasons) == 1, reasons
    assert fragment in reasons[0] and "\n" not in reasons[0]


def test_good_scans_of_the_batch_still_register(bad_batch, motion_cohort):
    params, run, good, _ = bad_batch
    images = {r["image"] for r in good}
    labels = {r["label"] for r in good if r["label"]}
    with session_scope(params.registry.url) as s:
        registered = set(s.scalars(select(Scan.source_path)).all())
        rejected = s.scalar(select(func.count()).select_from(Rejection))
    assert images <= registered
    total = len(images) + len(labels) + 3  # + the L patient's good image in each visit
    assert f"registered {total}" in run.output, run.output
    assert rejected == len(CASES)


def test_exit_status_counts_failures_and_a_table_is_printed(bad_batch):
    _, run, _, _ = bad_batch
    assert run.exit_code == len(CASES), run.output
    assert f"rejected {len(CASES)} files" in run.output
    assert re.search(r"patient\s+line\s+visit\s+kind\s+reason\n", run.output)
    assert "label values [7]" in run.output


def test_rerun_of_the_bad_batch_records_nothing_new(bad_batch, tmp_path):
    params, _, _, _ = bad_batch
    batch = params.preprocess.out_dir.parent / "batch.csv"
    with session_scope(params.registry.url) as s:
        before = s.scalar(select(func.count()).select_from(Rejection))
    result = register_source(batch, params, progress=False)
    with session_scope(params.registry.url) as s:
        after = s.scalar(select(func.count()).select_from(Rejection))
    assert result.registered == 0 and len(result.rejected) == len(CASES) == before == after
