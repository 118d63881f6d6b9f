"""Shared fixtures: small synthetic cohorts built once per test session."""

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mtlgen.config import SynthConfig
from mtlgen.io.nifti import save_nifti
from mtlgen.io.series import PatientSeries, VisitVolumes
from mtlgen.synth.cohort import write_cohort

SYNTH_SEED = 7


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module: two threads on two shared, busy cores spin and run
    several times slower (CPU-bound model tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synth_seed() -> int:
    return SYNTH_SEED


@pytest.fixture(scope="session")
def small_synth_config() -> SynthConfig:
    """4 patients at the default 2 mm: enough to see every growth course."""
    return SynthConfig(patients=4, visits_min=3, visits_max=4, workers=1)


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory, small_synth_config) -> Path:
    out = tmp_path_factory.mktemp("cohort") / "bids"
    write_cohort(small_synth_config, SYNTH_SEED, out, progress=False)
    return out


ALIGNED_SEED = 11
ALIGNED_BOX = 32  # voxels per side of the crop around the brain (4 mm -> 128 mm)


def _normalise(image: np.ndarray) -> np.ndarray:
    """Robust per-image scaling: 1st..99th percentile of the head to 0..1."""
    head = image[image > np.percentile(image, 50)]
    lo, hi = np.percentile(head, [1, 99])
    return ((image - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def write_aligned_series(
    bids: Path, out: Path, box: int | tuple[int, int, int] = ALIGNED_BOX
) -> list[PatientSeries]:
    """Stand-in for registration's output: crop, normalise and list an already-aligned cohort.

    ``bids`` must come from ``write_cohort`` without head motion (no rotation/translation), so
    every visit already shares its patient's baseline grid. Each image is cropped to a ``box``
    (cube side or shape) around the brain's bounding-box centre and saved as float32 NIfTI.
    """
    visits_tsv = (bids / "derivatives/groundtruth/visits.tsv").read_text().splitlines()
    header = visits_tsv[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in visits_tsv[1:]]
    series = []
    for pid in sorted({r["participant_id"] for r in rows}):
        prows = [r for r in rows if r["participant_id"] == pid]
        base = prows[0]
        first = nib.load(
            bids
            / pid
            / base["session_id"]
            / "anat"
            / f"{pid}_{base['session_id']}_{base['contrasts'].split(',')[0]}.nii.gz"
        )
        ref = np.asarray(first.dataobj, dtype=np.float32)
        head = np.argwhere(ref > np.percentile(ref, 60))
        size = np.broadcast_to(np.asarray(box), (3,))
        start = np.clip((head.min(0) + head.max(0)) // 2 - size // 2, 0, np.array(ref.shape) - size)
        crop = tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))
        affine = first.affine.copy()
        affine[:3, 3] = first.affine[:3, :3] @ start + first.affine[:3, 3]
        visits = []
        for row in prows:
            ses = row["session_id"]
            anat = bids / pid / ses / "anat"
            dest = out / pid.removeprefix("sub-") / ses
            images = {}
            for contrast in row["contrasts"].split(","):
                data = np.asarray(nib.load(anat / f"{pid}_{ses}_{contrast}.nii.gz").dataobj)
                images[contrast] = save_nifti(
                    dest / f"{contrast}.nii.gz", _normalise(data.astype(np.float32))[crop], affine
                )
            label_path = (
                bids / "derivatives/labels" / pid / ses / "anat" / f"{pid}_{ses}_dseg.nii.gz"
            )
            label = np.asarray(nib.load(label_path).dataobj, dtype=np.uint8)[crop]
            visits.append(
                VisitVolumes(
                    ses.removeprefix("ses-"),
                    float(row["days"]),
                    images,
                    save_nifti(dest / "label.nii.gz", label, affine, dtype=np.uint8),
                )
            )
        series.append(PatientSeries(pid.removeprefix("sub-"), tuple(visits)))
    return series


@pytest.fixture(scope="session")
def aligned_series(tmp_path_factory) -> list[PatientSeries]:
    """4 aligned patients (4 mm, 32^3 crop, normalised float32): registration's hand-over shape.

    A test fixture standing in for ``mtlgen.registry.series.load_series``.
    """
    root = tmp_path_factory.mktemp("aligned")
    cfg = SynthConfig(
        patients=4,
        spacing_mm=4.0,
        max_rotation_deg=0,
        max_translation_mm=0,
        bias_strength=0,
        workers=1,
    )
    write_cohort(cfg, ALIGNED_SEED, root / "bids", progress=False)
    return write_aligned_series(root / "bids", root / "processed")


MOTION_SEED = 5


@pytest.fixture(scope="session")
def motion_cohort(tmp_path_factory) -> Path:
    """3 patients at 4 mm with head motion between visits (poses known): registration input."""
    out = tmp_path_factory.mktemp("motion") / "bids"
    write_cohort(
        SynthConfig(patients=3, spacing_mm=4.0, workers=1), MOTION_SEED, out, progress=False
    )
    return out


@pytest.fixture(scope="session")
def register_params(tmp_path_factory):
    """Factory: Params whose registry, key file and processed folder live under ``root``; files
    anywhere under pytest's temporary folder may be registered (``registry.allowed_roots``)."""
    from mtlgen.config import Params

    allowed = str(tmp_path_factory.getbasetemp())  # manifests name cohorts in other folders

    def make(root: Path, url: str | None = None):
        return Params.model_validate(
            {
                "registry": {
                    "url": url or f"sqlite:///{root / 'registry.sqlite'}",
                    "key_file": str(root / "pseudonym.key"),
                    "allowed_roots": [allowed],
                },
                "preprocess": {"out_dir": str(root / "processed")},
            }
        )

    return make


@pytest.fixture(scope="session")
def manifest_rows():
    """Factory: CSV manifest rows (dicts) for some patients of a synthetic cohort: the rows of
    the ``manifest.csv`` that ``write_cohort`` writes beside it, with absolute paths."""

    def rows(cohort: Path, patients: set[str]) -> list[dict]:
        with (cohort / "manifest.csv").open(newline="") as fh:
            chosen = [r for r in csv.DictReader(fh) if r["patient"] in patients]
        for row in chosen:
            for column in ("image", "label"):
                row[column] = str(cohort / row[column]) if row[column] else ""
        return chosen

    return rows


TINY_BOX = 16


@pytest.fixture(scope="session")
def tiny_series(tmp_path_factory, aligned_series) -> list[PatientSeries]:
    """``aligned_series`` cropped to a 16^3 cube around each patient's baseline lesion."""
    root = tmp_path_factory.mktemp("tiny")
    out = []
    for series in aligned_series:
        base = nib.load(series.visits[0].label)
        lesion = np.argwhere(np.asarray(base.dataobj) > 0)
        centre = lesion.mean(0).round().astype(int)
        start = np.clip(centre - TINY_BOX // 2, 0, np.array(base.shape) - TINY_BOX)
        crop = tuple(slice(s, s + TINY_BOX) for s in start)
        affine = base.affine.copy()
        affine[:3, 3] = base.affine[:3, :3] @ start + base.affine[:3, 3]
        visits = []
        for v in series.visits:
            dest = root / series.patient / v.visit
            images = {
                c: save_nifti(dest / f"{c}.nii.gz", np.asarray(nib.load(p).dataobj)[crop], affine)
                for c, p in v.images.items()
            }
            label = np.asarray(nib.load(v.label).dataobj, dtype=np.uint8)[crop]
            label_path = save_nifti(dest / "label.nii.gz", label, affine, dtype=np.uint8)
            visits.append(VisitVolumes(v.visit, v.days, images, label_path))
        out.append(PatientSeries(series.patient, tuple(visits)))
    return out


@pytest.fixture(scope="session")
def report_cohort(tmp_path_factory, small_cohort, register_params):
    """``small_cohort`` registered into a fresh registry: (params, truth), truth per source id:
    its rows of the generator's visits.tsv (days, true and law volumes, course)."""
    from mtlgen.register.run import register_source

    params = register_params(tmp_path_factory.mktemp("report-registry"))
    register_source(small_cohort, params, progress=False)
    truth: dict[str, list[dict]] = {}
    with (small_cohort / "derivatives/groundtruth/visits.tsv").open() as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            truth.setdefault(row["participant_id"].removeprefix("sub-"), []).append(row)
    return params, truth
