"""Each evaluation metric against values computed by hand on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from mtlgen.evaluate.metrics import (
    brain_region,
    changing_region,
    dice,
    hd95,
    near_region,
    region_mae,
    region_nanmean,
    region_psnr,
    ssim_map,
    status_scores,
    volume_errors,
)
from mtlgen.progression import label_volume_ml, voxel_spacing_mm, voxel_volume_ml

SHAPE = (12, 12, 12)


def test_dice_hand_computed_overlap():
    pred, truth = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    pred[0, 0, 0:4] = True  # 4 voxels
    truth[0, 0, 1:7] = True  # 6 voxels, 3 shared
    assert dice(pred, truth) == pytest.approx(2 * 3 / (4 + 6))


def test_dice_empty_conventions():
    empty, one = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    one[3, 3, 3] = True
    assert dice(empty, empty) == 1.0
    assert dice(one, empty) == 0.0
    assert dice(empty, one) == 0.0


def test_dice_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))


def test_hd95_uses_spacing():
    pred, truth = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    pred[2, 5, 5] = True
    truth[5, 5, 5] = True  # 3 voxels apart along the first axis
    assert hd95(pred, truth, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert hd95(truth, truth, (2.0, 1.0, 1.0)) == 0.0


def test_hd95_empty_conventions():
    empty, one = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    one[3, 3, 3] = True
    assert hd95(empty, empty, (1.0, 1.0, 1.0)) == 0.0
    diagonal = np.sqrt(3 * (12 * 2.0) ** 2)
    assert hd95(empty, one, (2.0, 2.0, 2.0)) == pytest.approx(diagonal)
    assert hd95(one, empty, (2.0, 2.0, 2.0)) == pytest.approx(diagonal)


def test_volumes_from_affine():
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    assert voxel_spacing_mm(affine) == (2.0, 2.0, 3.0)
    assert voxel_volume_ml(affine) == pytest.approx(0.012)
    label = np.zeros(SHAPE, np.uint8)
    label[0, 0, :10] = 1
    label[1, 0, :5] = 2  # edema is not core
    assert label_volume_ml(label, affine) == pytest.approx(10 * 0.012)
    with pytest.raises(ValueError, match="degenerate"):
        voxel_volume_ml(np.diag([1.0, 0.0, 1.0, 1.0]))


def test_volume_errors():
    assert volume_errors(3.0, 4.0) == pytest.approx((1.0, 0.25))
    abs_err, rel = volume_errors(1.0, 0.0)
    assert abs_err == 1.0 and np.isnan(rel)
    with pytest.raises(ValueError, match="finite"):
        volume_errors(float("nan"), 1.0)


def test_status_accuracy_and_macro_f1_by_hand():
    truth = ["progressive", "progressive", "stable", "responding"]
    pred = ["progressive", "stable", "stable", "stable"]
    acc, f1 = status_scores(truth, pred)
    # F1: progressive 2/3, stable 2*1/(2+2+0) = 0.5, responding 0
    assert acc == pytest.approx(0.5)
    assert f1 == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)
    # a class absent from truth and prediction is left out of the macro average
    assert status_scores(["stable", "stable"], ["stable", "stable"]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="expected one of"):
        status_scores(["growing"], ["stable"])


def test_region_restricted_mae_and_psnr():
    truth = np.zeros(SHAPE, np.float32)
    region = np.zeros(SHAPE, bool)
    region[:6] = True
    pred = truth + np.where(region, 0.1, 5.0).astype(np.float32)
    assert region_mae(pred, truth, region) == pytest.approx(0.1, rel=1e-6)
    assert region_mae(pred, truth, ~region) == pytest.approx(5.0)
    assert region_psnr(pred, truth, region, data_range=1.0) == pytest.approx(20.0, abs=1e-4)
    assert region_psnr(truth, truth, region, 1.0) == float("inf")
    assert np.isnan(region_mae(pred, truth, np.zeros(SHAPE, bool)))


def region_ssim(pred, truth, region, data_range, window):
    """Mean local SSIM over a region, as the evaluation runner takes it."""
    return region_nanmean(ssim_map(pred, truth, data_range, window), region)


def test_region_ssim_constant_images():
    # constant windows: SSIM = (2ab + c1) / (a^2 + b^2 + c1), c1 = (0.01 * range)^2
    a, b = np.ones(SHAPE, np.float32), np.full(SHAPE, 0.5, np.float32)
    region = np.ones(SHAPE, bool)
    c1 = 1e-4
    assert region_ssim(b, a, region, 1.0, 5) == pytest.approx((1 + c1) / (1.25 + c1), rel=1e-4)
    rng = np.random.default_rng(0)
    noisy = rng.random(SHAPE).astype(np.float32)
    assert region_ssim(noisy, noisy, region, 1.0, 5) == pytest.approx(1.0, abs=1e-5)
    edge_only = np.zeros(SHAPE, bool)
    edge_only[0] = True  # no complete window fits there
    assert np.isnan(region_ssim(noisy, noisy, edge_only, 1.0, 5))


def test_brain_region_fills_ventricles_and_skips_background():
    grid = np.indices((24, 24, 24)) - 11.5
    radius = np.sqrt((grid**2).sum(0))
    image = np.where(radius < 9, 1.0, 0.0) + 0.3  # offset: the region must not depend on it
    image[radius < 3] = 0.3  # dark "ventricle" inside
    region = brain_region(image, fraction=0.3, sigma_vox=0.5)
    assert region[radius < 3].all()
    assert not region[radius > 11].any()
    assert region.sum() == pytest.approx((radius < 9).sum(), rel=0.1)


def test_changing_region_is_the_label_difference_dilated():
    before, after = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    before[5, 5, 5] = 1
    after[5, 5, 5:7] = 1  # the lesion grows by one voxel
    exact = changing_region(before, after, dilation_vox=0)
    assert exact.sum() == 1 and exact[5, 5, 6]
    assert changing_region(before, after, dilation_vox=1).sum() == 7  # 6-connected cross
    assert not changing_region(before, before, dilation_vox=2).any()


def test_ssim_map_matches_monai():
    import torch
    from monai.metrics.regression import compute_ssim_and_cs

    rng = np.random.default_rng(3)
    truth = rng.random((14, 15, 16)).astype(np.float32)
    pred = (truth + 0.2 * rng.standard_normal(truth.shape)).astype(np.float32)
    ours = ssim_map(pred, truth, data_range=1.0, window=7)
    theirs, _ = compute_ssim_and_cs(
        torch.from_numpy(pred)[None, None],
        torch.from_numpy(truth)[None, None],
        spatial_dims=3,
        kernel_size=[7, 7, 7],
        kernel_sigma=[1.5, 1.5, 1.5],
        data_range=1.0,
    )
    assert np.isnan(ours[:3]).all() and np.isnan(ours[-3:]).all()
    np.testing.assert_allclose(ours[3:-3, 3:-3, 3:-3], theirs[0, 0].numpy(), atol=2e-5)


def test_near_region_is_the_reference_lesion_grown_in_mm_within_the_brain():
    label = np.zeros((20, 20, 20), np.uint8)
    label[10, 10, 10] = 2  # one edema voxel counts as lesion
    brain = np.ones_like(label, dtype=bool)
    brain[:, :, :8] = False
    near = near_region(label, (2.0, 2.0, 4.0), 8.0, brain)
    assert near[10, 10, 10] and near[14, 10, 10] and not near[15, 10, 10]  # 4 voxels of 2 mm
    assert near[10, 10, 12] and not near[10, 10, 13]  # 2 voxels of 4 mm
    assert not near[10, 10, 8 - 1]  # outside the brain
    assert near_region(np.zeros_like(label), (2.0, 2.0, 2.0), 8.0, brain) is None
