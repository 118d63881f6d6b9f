"""The synthetic cohort: deterministic, real anatomy, known laws, known poses, BIDS layout."""

import csv
import json
import re

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mtlgen.config import SynthConfig
from mtlgen.synth.anatomy import load_anatomy
from mtlgen.synth.cohort import GROUNDTRUTH_DIR, draw_patient, write_cohort
from mtlgen.synth.growth import GrowthLaw

FAST = SynthConfig(patients=2, spacing_mm=4.0, workers=1)


def visit_rows(cohort):
    with open(cohort / GROUNDTRUTH_DIR / "visits.tsv") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_same_seed_identical_different_seed_different():
    a = draw_patient(FAST, 3, 0)
    b = draw_patient(FAST, 3, 0)
    c = draw_patient(FAST, 4, 0)
    ra, rb, rc = (p.render(p.visits[1]) for p in (a, b, c))
    for contrast in ra.images:
        np.testing.assert_array_equal(ra.images[contrast], rb.images[contrast])
    np.testing.assert_array_equal(ra.label, rb.label)
    assert a.lesions[0].law == b.lesions[0].law
    assert a.lesions[0].law != c.lesions[0].law
    assert not np.array_equal(ra.images["T1w"], rc.images.get("T1w", ra.images["T1w"] * 0))


def test_written_cohort_is_deterministic(tmp_path):
    one, two = tmp_path / "a", tmp_path / "b"
    for out in (one, two):
        write_cohort(FAST.model_copy(update={"patients": 1}), 11, out, progress=False)
    files = sorted(p.relative_to(one) for p in one.rglob("*.nii.gz"))
    assert files
    for rel in files:
        np.testing.assert_array_equal(
            np.asanyarray(nib.load(one / rel).dataobj), np.asanyarray(nib.load(two / rel).dataobj)
        )
    assert (one / GROUNDTRUTH_DIR / "groundtruth.json").read_text() == (
        two / GROUNDTRUTH_DIR / "groundtruth.json"
    ).read_text()


def test_table_volumes_equal_mask_volumes(small_cohort):
    rows = visit_rows(small_cohort)
    assert len(rows) >= 4 * 3
    for row in rows:
        sub, ses = row["participant_id"], row["session_id"]
        path = small_cohort / "derivatives/labels" / sub / ses / "anat" / f"{sub}_{ses}_dseg.nii.gz"
        img = nib.load(path)
        voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000.0
        label = np.asanyarray(img.dataobj)
        assert set(np.unique(label)) <= {0, 1, 2}
        assert abs((label == 1).sum() * voxel_ml - float(row["core_ml"])) < 1e-6
        assert abs((label == 2).sum() * voxel_ml - float(row["edema_ml"])) < 1e-6


def test_volumes_follow_declared_law(small_cohort):
    truth = json.loads((small_cohort / GROUNDTRUTH_DIR / "groundtruth.json").read_text())
    courses = set()
    for row in visit_rows(small_cohort):
        (lesion,) = truth["patients"][row["participant_id"]]["lesions"]  # one per demo patient
        law = GrowthLaw(**lesion["growth_law"])
        courses.add(law.course)
        expected = float(law.volume(float(row["days"])))
        assert abs(float(row["core_ml"]) - expected) / expected < 0.02, row
    assert len(courses) >= 2  # the small cohort mixes growth courses


def test_growth_laws_have_their_shape():
    days = np.array([0.0, 100.0, 200.0, 400.0])
    grow = GrowthLaw("progressive", 2.0, 16.0, 1.5).volume(days)
    assert np.all(np.diff(grow) > 0) and grow[0] == pytest.approx(2.0) and grow[-1] < 16.0
    stable = GrowthLaw("stable", 2.0, 16.0, 1.5).volume(days)
    assert np.all(stable == 2.0)
    resp = GrowthLaw("responding", 2.0, 16.0, 1.5, treatment_day=150.0, shrink_rate=2.0).volume(
        days
    )
    assert resp[1] > resp[0] and resp[3] < resp[2] and resp[3] > 0.3 * resp[1]
    years = np.array([0.0, 0.5, 1.0, 10.0])
    for law, at_one_year in (
        ("logistic", 16.0 / (1 + 7 * np.exp(-1.5))),
        ("exponential", min(2.0 * np.exp(1.5), 16.0)),
        ("linear", 2.0 * 2.5),
    ):
        v = GrowthLaw("progressive", 2.0, 16.0, 1.5, law=law).volume(years * 365.25)
        assert v[0] == pytest.approx(2.0) and v[2] == pytest.approx(at_one_year)
        assert np.all(np.diff(v) >= 0) and v[-1] == pytest.approx(16.0, rel=1e-3)
    with pytest.raises(ValueError, match="growth law 'cubic'"):
        GrowthLaw("progressive", 2.0, 16.0, 1.5, law="cubic").volume(days)


def brain_dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_stored_rigid_transform_aligns_visits(small_cohort, small_synth_config, synth_seed):
    truth = json.loads((small_cohort / GROUNDTRUTH_DIR / "groundtruth.json").read_text())
    patient = draw_patient(small_synth_config, synth_seed, 0)
    _, affine, _ = patient.grid()
    base = patient.render(patient.visits[0], scanner=False).brain_mask
    for k in (1, 2):
        moving = patient.render(patient.visits[k], scanner=False).brain_mask
        to_baseline = np.array(truth["patients"]["sub-001"]["visits"][k]["to_baseline"])
        # baseline voxel -> baseline world -> visit world -> visit voxel
        vox = np.linalg.inv(affine) @ np.linalg.inv(to_baseline) @ affine
        warped = ndimage.affine_transform(moving.astype(np.uint8), vox[:3, :3], vox[:3, 3], order=0)
        aligned, unaligned = brain_dice(warped > 0, base), brain_dice(moving, base)
        assert aligned > 0.95
        assert unaligned < aligned - 0.05


def test_bids_names(small_cohort):
    image = re.compile(
        r"^sub-([A-Za-z0-9]+)/ses-([A-Za-z0-9]+)/anat/sub-\1_ses-\2_(T1w|FLAIR)\.nii\.gz$"
    )
    label = re.compile(
        r"^derivatives/labels/sub-([A-Za-z0-9]+)/ses-([A-Za-z0-9]+)/anat/sub-\1_ses-\2_dseg\.nii\.gz$"
    )
    files = [p.relative_to(small_cohort).as_posix() for p in small_cohort.rglob("*.nii.gz")]
    images = [f for f in files if image.match(f)]
    labels = [f for f in files if label.match(f)]
    assert images and labels and len(images) + len(labels) == len(files)
    assert len(labels) == len(visit_rows(small_cohort))
    for sub in sorted(small_cohort.glob("sub-*")):
        with open(sub / f"{sub.name}_sessions.tsv") as fh:
            sessions = list(csv.DictReader(fh, delimiter="\t"))
        assert {s["session_id"] for s in sessions} == {p.name for p in sub.glob("ses-*")}
    for name in ("dataset_description.json", "participants.tsv"):
        assert (small_cohort / name).exists()


def test_images_are_real_anatomy():
    patient = draw_patient(FAST, 5, 1)
    rendered = patient.render(patient.visits[0], pose=np.eye(4), scanner=False)
    anatomy = load_anatomy(FAST.voxel_mm)
    _, _, world = patient.grid()
    template = anatomy.sample(world)[0].numpy().reshape(rendered.label.shape)
    brain = rendered.brain_mask
    r = np.corrcoef(rendered.images["T1w"][brain], template[brain])[0, 1]
    assert 0.8 < r < 0.999  # the same anatomy, deformed per patient


def test_orientation_and_dtype_are_configurable(tmp_path):
    ras, lps = tmp_path / "ras", tmp_path / "lps"
    cfg = FAST.model_copy(update={"patients": 1, "missing_contrast_prob": 0.0})
    write_cohort(cfg, 2, ras, progress=False)
    write_cohort(
        cfg.model_copy(update={"orientation": "LPS", "dtype": "float32"}), 2, lps, progress=False
    )
    rel = "sub-001/ses-01/anat/sub-001_ses-01_T1w.nii.gz"
    a, b = nib.load(ras / rel), nib.load(lps / rel)
    assert nib.aff2axcodes(b.affine) == ("L", "P", "S")
    assert b.get_data_dtype() == np.float32 and a.get_data_dtype() == np.int16
    ca, cb = nib.as_closest_canonical(a), nib.as_closest_canonical(b)
    np.testing.assert_allclose(ca.affine, cb.affine, atol=1e-5)
    np.testing.assert_allclose(ca.get_fdata(), np.round(cb.get_fdata()), atol=0.5)


def test_stress_options_vary_laws_lesions_voxels_orientations_and_storage(tmp_path):
    """A stress cohort: several lesions per patient with mixed growth laws and capacities,
    anisotropic voxels, a mix of orientations and storage types, per-patient contrast; the
    labels still hold every lesion's declared volume, and the CSV manifest lists every scan."""
    cfg = FAST.model_copy(
        update={
            "patients": 3,
            "spacing_mm": (3.0, 3.0, 4.5),
            "orientation": ["LPS", "LAS", "RAS"],
            "dtype": ["float32", "int16"],
            "growth_law": "mixed",
            "capacity_ml": (10.0, 30.0),
            "lesions": (2, 3),
            "contrast_jitter": 0.1,
            "fraction_stable": 0.0,
            "fraction_responding": 0.0,
        }
    )
    write_cohort(cfg, 3, tmp_path, progress=False)
    truth = json.loads((tmp_path / GROUNDTRUTH_DIR / "groundtruth.json").read_text())
    assert truth["voxel_mm"] == [3.0, 3.0, 4.5]
    counts = [len(p["lesions"]) for p in truth["patients"].values()]
    assert all(2 <= n <= 3 for n in counts)
    capacities = {
        round(lesion["growth_law"]["carrying_capacity_ml"], 6)
        for p in truth["patients"].values()
        for lesion in p["lesions"]
    }
    assert len(capacities) == sum(counts) and all(10.0 <= c <= 30.0 for c in capacities)
    for row in visit_rows(tmp_path):
        lesions = truth["patients"][row["participant_id"]]["lesions"]
        declared = sum(
            float(GrowthLaw(**lesion["growth_law"]).volume(float(row["days"])))
            for lesion in lesions
        )
        assert float(row["law_core_ml"]) == pytest.approx(declared, rel=1e-6)
        assert abs(float(row["core_ml"]) - declared) / declared < 0.03, row
    stored = {(p["orientation"], p["dtype"]) for p in truth["patients"].values()}
    for sub, look in truth["patients"].items():
        img = nib.load(next((tmp_path / sub).glob("ses-01/anat/*_T1w.nii.gz")))
        assert "".join(nib.aff2axcodes(img.affine)) == look["orientation"]
        assert img.get_data_dtype() == np.dtype(look["dtype"])
        np.testing.assert_allclose(
            sorted(np.linalg.norm(img.affine[:3, :3], axis=0)), [3.0, 3.0, 4.5]
        )
    assert len(stored) >= 2
    with (tmp_path / "manifest.csv").open() as fh:
        manifest = list(csv.DictReader(fh))
    assert len(manifest) == len(list(tmp_path.glob("sub-*/ses-*/anat/*.nii.gz")))
    assert all(
        (tmp_path / r["image"]).exists() and (tmp_path / r["label"]).exists() for r in manifest
    )
