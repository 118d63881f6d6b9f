"""Longitudinal datasets, patient-level splits and augmentation on real (synthetic) volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlgen.config import DataConfig
from mtlgen.data.dataset import LongitudinalDataset
from mtlgen.data.splits import load_split, make_split, save_split
from mtlgen.data.trajectories import volume_trajectories
from mtlgen.io.series import PatientSeries, load_visit
from mtlgen.progression import STATUSES, lesion_volumes_ml, progression_status

INC = DEC = 0.25


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dataset(series, **overrides) -> LongitudinalDataset:
    cfg = DataConfig(**{"augment": False, "mask_dropout": 0.0, **overrides})
    return LongitudinalDataset(series, cfg, INC, DEC, train=True, seed=3)


def test_split_no_patient_crosses_and_datasets_follow_it(tmp_path, tiny_series):
    patients = [f"P{i:03d}" for i in range(40)] + [s.patient for s in tiny_series]
    split = make_split(patients, 0.2, 0.2, seed=5)
    sets = [set(split.train), set(split.val), set(split.test)]
    assert sum(len(s) for s in sets) == len(set(patients))
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert load_split(save_split(split, tmp_path / "s.json")) == split
    train = [s for s in tiny_series if s.patient in split.train]
    held_out = {s.patient for s in tiny_series} - set(split.train)
    ds = _dataset(train)
    assert {spec.patient for spec in ds.samples} <= set(split.train)
    assert not {spec.patient for spec in ds.samples} & held_out


def test_item_targets_match_the_label_files(tiny_series):
    ds = _dataset(tiny_series)
    assert len(ds) == sum(
        (n := len(s.visits)) - 1 + max(0, n - 2) for s in tiny_series
    )  # futures + reconstructions with a later context visit
    for index in range(len(ds)):
        spec, item = ds.samples[index], ds[index]
        target = load_visit(ds.series[spec.patient].visits[spec.target])
        vox = float(item["voxel_ml"])
        assert vox == pytest.approx(0.064, rel=1e-4)  # 4 mm voxels
        core, lesion = lesion_volumes_ml(target.label, vox)
        assert item["target_volume"].tolist() == pytest.approx([core, lesion], rel=1e-5)
        assert np.array_equal(item["target_mask"].numpy(), target.label)
        n = len(spec.context)
        assert item["visit_valid"].tolist() == [True] * n + [False] * (3 - n)
        ref = int(item["ref_slot"])
        ref_core = float((item["masks"][ref] == 1).sum()) * vox
        assert STATUSES[int(item["status"])] == progression_status(ref_core, core, INC, DEC)
        days = [ds.series[spec.patient].visits[i].days for i in spec.context]
        expected = [(d - target.days) / 365.25 for d in days] + [0.0] * (3 - n)
        assert item["years"].tolist() == pytest.approx(expected, abs=1e-6)
        if spec.kind == "future":
            assert (item["years"][:n] < 0).all() and ref == n - 1


def test_missing_contrast_is_zero_and_flagged(tiny_series):
    ds = _dataset(tiny_series)
    found = 0
    for index, spec in enumerate(ds.samples):
        visits = ds.series[spec.patient].visits
        item = ds[index]
        for k, vi in enumerate(spec.context):
            for c, name in enumerate(ds.cfg.contrasts):
                has = name in visits[vi].images
                assert bool(item["contrast_present"][k, c]) == has
                if not has:
                    found += 1
                    assert float(item["images"][k, c].abs().max()) == 0.0
    assert found > 0, "the fixture cohort should contain a visit with a missing contrast"


def test_padding_keeps_patients_with_few_visits(tiny_series):
    two = PatientSeries("short", tiny_series[0].visits[:2])
    ds = _dataset([two])
    assert len(ds) == 1
    item = ds[0]
    assert item["visit_valid"].tolist() == [True, False, False]
    assert float(item["images"][1:].abs().max()) == 0.0


def test_augmentation_moves_all_visits_together(tiny_series):
    series = tiny_series[0]
    plain = _dataset([series])[0]
    flipped = _dataset([series], augment=True, flip_prob=1.0, affine_prob=0.0)[0]
    assert torch.equal(flipped["images"], plain["images"].flip(2))
    assert torch.equal(flipped["target_image"], plain["target_image"].flip(1))
    assert torch.equal(flipped["masks"], plain["masks"].flip(1))
    # identical visits stay identical under a random rotation/scaling
    same = PatientSeries(
        "twin",
        (
            series.visits[0],
            *[
                type(series.visits[0])("b", 100.0, series.visits[0].images, series.visits[0].label),
                type(series.visits[0])("c", 200.0, series.visits[0].images, series.visits[0].label),
            ],
        ),
    )
    moved = _dataset([same], augment=True, flip_prob=0.0, affine_prob=1.0, rotate_deg=20)[1]
    assert _dataset([same]).samples[1].context == (0, 1)
    assert not torch.equal(moved["images"][0], _dataset([same])[1]["images"][0])
    assert torch.allclose(moved["images"][0], moved["images"][1])
    assert torch.allclose(moved["images"][1], moved["target_image"])
    assert torch.equal(moved["masks"][0], moved["target_mask"])


def test_draws_are_keyed_by_seed_epoch_and_index(tiny_series):
    ds = _dataset(tiny_series, augment=True, affine_prob=1.0, mask_dropout=0.5)
    ds.set_epoch(1)
    a = ds[2]
    ds.set_epoch(2)
    b = ds[2]
    ds.set_epoch(1)
    c = ds[2]
    assert torch.equal(a["images"], c["images"]) and torch.equal(a["mask_input"], c["mask_input"])
    assert not torch.equal(a["images"], b["images"])


def test_two_dimensional_samples_take_the_lesion_slice(tiny_series):
    cfg = DataConfig(augment=False, mask_dropout=0.0)
    ds = LongitudinalDataset(tiny_series[:1], cfg, INC, DEC, spatial_dims=2)
    item = ds[0]
    assert item["images"].shape[2:] == (16, 16)
    z = int(item["slice_z"])
    ref = load_visit(tiny_series[0].visits[0]).label
    assert (ref[..., z] > 0).sum() == max((ref[..., i] > 0).sum() for i in range(ref.shape[2]))


def test_volume_trajectories_are_the_future_cases_label_volumes(tiny_series):
    cases = volume_trajectories(tiny_series, max_context=2)
    assert len(cases) == sum(len(s.visits) - 1 for s in tiny_series)
    patient = tiny_series[0]
    ml = [lesion_volumes_ml(load_visit(v).label, 0.064) for v in patient.visits]
    mine = cases.of([patient.patient])
    # the third visit's case: visits 0 and 1 as context, both before it
    days = [v.days for v in patient.visits]
    assert mine.truth[1].tolist() == pytest.approx(ml[2])
    assert np.allclose(mine.volumes[1].numpy(), [ml[0], ml[1]])
    assert mine.years[1].tolist() == pytest.approx([(d - days[2]) / 365.25 for d in days[:2]])
    assert mine.valid[1].tolist() == [True, True] and int(mine.ref[1]) == 1
    # the second visit's case has one context visit: the other slot is padding
    assert mine.valid[0].tolist() == [True, False] and int(mine.ref[0]) == 0
    assert mine.volumes[0, 1].tolist() == [0.0, 0.0]
    assert set(cases.of([]).patients) == set()
