"""Closed-form priors the heads correct: volume line, nearest given mask, class-mean change."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtlgen.models.priors import (
    class_mean_change,
    class_means,
    dilate,
    extrapolated_log_volume,
    fit_growth_prior,
    gaussian_blur,
    gompertz_at_target,
    line_at_target,
    nearest_given_mask,
    sized_label,
    stable_tissue_mean,
)


def test_line_at_target_is_the_least_squares_line_read_at_the_target():
    years = torch.tensor([[-3.0, -2.0, -1.0]])
    values = torch.tensor([[[1.0, 10.0], [2.0, 10.0], [3.0, 10.0]]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    assert line_at_target(values, years, valid).tolist() == [[4.0, 10.0]]  # one year on
    noisy = torch.tensor([[[1.0], [3.0], [2.0]]])  # least squares: 2 + 0.5 (t + 2)
    assert torch.allclose(line_at_target(noisy, years, valid), torch.tensor([[3.0]]))
    between = line_at_target(values[:, :2], torch.tensor([[-0.5, 0.5]]), valid[:, :2])
    assert between.tolist() == [[1.5, 10.0]]
    padded = torch.tensor([[True, False, False]])  # one valid visit: its value
    assert line_at_target(values, years, padded).tolist() == [[1.0, 10.0]]


def test_nearest_given_mask_takes_the_closest_other_labelled_visit():
    masks = torch.tensor([[0, 1, 2]]).reshape(1, 3, 1).expand(1, 3, 4).clone()  # value = slot
    onehot = F.one_hot(masks, 3).movedim(-1, 2).float()  # [1, 3 visits, 3 classes, 4]
    years = torch.tensor([[-2.0, -1.5, 0.0]])
    given = torch.tensor([[True, False, True]])
    every = torch.ones(1, 3, dtype=torch.bool)
    prior = nearest_given_mask(onehot, years, given, every)  # [3 visits, 3 channels, 4]
    # slot 1 (hidden) is nearest to slot 0 (label 0: no lesion), slot 0 sees slot 2 (edema)
    assert prior[1].amax(dim=-1).tolist() == [0.0, 0.0, 1.0]
    assert prior[0].amax(dim=-1).tolist() == [0.0, 1.0, 1.0]  # edema: lesion, not core
    only = nearest_given_mask(onehot, years, given, torch.tensor([[False, True, False]]))
    assert torch.equal(only, prior[1:2])  # the selected visits only
    alone = nearest_given_mask(onehot, years, torch.tensor([[False, True, False]]), every)
    assert alone[1].abs().sum() == 0  # no other visit has a mask


def test_dilate_is_a_box_dilation():
    x = torch.zeros(1, 1, 9, 9, 9)
    x[0, 0, 4, 4, 4] = 1.0
    grown = dilate(x, 2)
    assert grown.sum() == 125 and grown[0, 0, 2:7, 2:7, 2:7].min() == 1.0
    assert torch.equal(dilate(x, 2), F.max_pool3d(x, 5, stride=1, padding=2))
    grey = torch.rand(2, 3, 7, 8, 9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dilate(grey, 1), F.max_pool3d(grey, 3, stride=1, padding=1))
    flat = grey[:, :, 0]  # 2-D
    assert torch.equal(dilate(flat, 2), F.max_pool2d(flat, 5, stride=1, padding=2))
    region = dilate(grey.requires_grad_(), 1)
    assert not region.requires_grad  # a region, not a learning signal


def test_class_mean_change_gives_new_lesion_voxels_the_lesion_look():
    image = torch.full((1, 1, 12, 12, 12), 0.3)  # tissue 0.3
    label = torch.zeros(1, 12, 12, 12, dtype=torch.long)
    label[0, 4:8, 4:8, 4:8] = 1  # core, intensity 0.9
    image[label[:, None] == 1] = 0.9
    grown = label.clone()
    grown[0, 3:9, 4:8, 4:8] = 1  # the core grows by one slice on each side
    shrunk = torch.zeros_like(label)  # ... or disappears
    ref = F.one_hot(label, 3).movedim(-1, 1).float()
    fallback = torch.zeros(3, 1)
    means = class_means(image, ref, fallback)  # shrunk towards 0 by 1 of 64 core voxels
    assert torch.allclose(means[0, :2, 0], torch.tensor([0.3, 0.9 * 64 / 65]), atol=1e-3)
    sharp = torch.tensor(0.1)  # ~no blur: the label change exactly
    out = class_mean_change(image, ref, F.one_hot(grown, 3).movedim(-1, 1).float(), fallback, sharp)
    assert torch.allclose(out[0, 0][grown[0] == 1], torch.tensor(0.9), atol=0.02)
    assert torch.equal(out[0, 0][grown[0] == 0], image[0, 0][grown[0] == 0])  # unchanged voxels
    gone = class_mean_change(
        image, ref, F.one_hot(shrunk, 3).movedim(-1, 1).float(), fallback, sharp
    )
    assert torch.allclose(gone, torch.tensor(0.3), atol=0.02)  # the lesion takes the tissue look


def test_class_mean_change_blurs_only_where_labels_change_as_a_full_blur_would():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 2, 10, 12, 9, generator=g)
    label = torch.zeros(2, 10, 12, 9, dtype=torch.long)
    label[0, 3:6, 4:8, 2:5], label[1, 0:3, 9:12, 6:9] = 1, 2  # sample 1 at the volume's corner
    new = label.clone()
    new[0, 2:7, 4:8, 2:5], new[1, 0:4, 8:12, 5:9] = 1, 2
    ref, grown = (F.one_hot(x, 3).movedim(-1, 1).float() for x in (label, new))
    fallback = torch.full((3, 2), 0.5, requires_grad=True)
    sigma = torch.tensor(0.8, requires_grad=True)
    out = class_mean_change(image, ref, grown, fallback, sigma)
    means = class_means(image, ref, fallback)
    full = image + gaussian_blur(torch.einsum("bk...,bkc->bc...", grown - ref, means), sigma)
    assert torch.allclose(out, full, atol=1e-6)
    weights = torch.rand(out.shape, generator=g)
    cropped = torch.autograd.grad((out * weights).sum(), (fallback, sigma))
    whole = torch.autograd.grad((full * weights).sum(), (fallback, sigma))
    for a, b in zip(cropped, whole, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    assert torch.equal(class_mean_change(image, ref, ref, fallback, sigma), image)  # no change


def test_gaussian_blur_keeps_the_mass_and_spreads_an_edge():
    x = torch.zeros(1, 1, 11, 11, 11)
    x[0, 0, 5, 5, 5] = 1.0
    blurred = gaussian_blur(x, torch.tensor(0.75))
    assert torch.isclose(blurred.sum(), torch.tensor(1.0), atol=1e-5)
    assert blurred[0, 0, 5, 5, 5] < 0.5 and blurred[0, 0, 4, 5, 5] > 0
    sigma = torch.tensor(0.75, requires_grad=True)  # differentiable in sigma: learnable
    gaussian_blur(x, sigma)[0, 0, 5, 5, 5].backward()
    assert sigma.grad < 0


def test_stable_tissue_mean_averages_visits_whose_label_agrees_with_the_reference():
    # 3 visits, 1 contrast, 4 voxels; voxel 3 becomes lesion at the last (reference) visit
    images = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0], [2.0, 3.0, 4.0, 9.0]])
    images = images.reshape(1, 3, 1, 4)
    labels = torch.tensor([[[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]])
    probs = F.one_hot(labels, 3).movedim(-1, 2).float()
    present = torch.tensor([[[True], [True], [True]]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    ref_probs = probs[:, 2]  # the last visit is the reference
    fallback = torch.full((1, 1, 4), -1.0)
    mean = stable_tissue_mean(images, present, probs, ref_probs, valid, fallback)
    assert mean.tolist() == [[[2.0, 3.0, 4.0, 9.0]]]  # the new lesion voxel: reference only
    # a visit without the contrast, or a padding slot, does not count
    absent = stable_tissue_mean(
        images,
        present & torch.tensor([True, False, True])[None, :, None],
        probs,
        ref_probs,
        valid,
        fallback,
    )
    assert absent.tolist() == [[[1.5, 2.5, 3.5, 9.0]]]
    padded = stable_tissue_mean(
        images, present, probs, ref_probs, torch.tensor([[False, True, True]]), fallback
    )
    assert padded.tolist() == [[[2.5, 3.5, 4.5, 9.0]]]
    # no visit with the contrast: the fallback
    none = stable_tissue_mean(images, present & False, probs, ref_probs, valid, fallback)
    assert none.tolist() == fallback.tolist()


def test_extrapolated_log_volume_moves_the_line_within_the_other_extrapolations():
    # 1, 2, 3 ml one year apart, target one year after the last visit: line 4 ml, last 3 ml
    volumes = torch.tensor([[[1.0], [2.0], [3.0]]])
    years = torch.tensor([[-3.0, -2.0, -1.0]])
    valid, ref = torch.ones(1, 3, dtype=torch.bool), torch.tensor([2])

    def log_ml(w1: float, w2: float, w3: float = 0.0) -> float:
        weights = torch.tensor([[w1, w2, w3]])
        capacity = torch.tensor([8.0])
        return float(extrapolated_log_volume(volumes, years, valid, ref, weights, capacity))

    assert log_ml(0, 0) == pytest.approx(np.log1p(4.0), abs=1e-5)  # linear extrapolation
    assert log_ml(0, 1) == pytest.approx(np.log1p(3.0), abs=1e-5)  # the reference volume
    halfway = (np.log1p(4.0) + np.log1p(3.0)) / 2
    assert log_ml(0, 0.5) == pytest.approx(halfway, abs=1e-5)
    # the Gompertz fit towards 8 ml: log(log 8 - log V) is a line through the three visits
    z = np.log(np.log(8.0) - np.log([1.0, 2.0, 3.0]))
    _, z0 = np.polyfit([-3.0, -2.0, -1.0], z, 1)
    gompertz = np.log1p(8.0 * np.exp(-np.exp(z0)))
    assert log_ml(0, 0, 1) == pytest.approx(gompertz, abs=1e-5)
    # never beyond the linear, reference and Gompertz volumes: the log-linear fit (above the
    # line here) and any weight pull only within them
    top = max(np.log1p(4.0), gompertz)
    _, intercept = np.polyfit([-3.0, -2.0, -1.0], np.log1p([1.0, 2.0, 3.0]), 1)
    assert intercept > top and log_ml(1, 0) == pytest.approx(top, abs=1e-5)
    assert log_ml(0, -40) == pytest.approx(top, abs=1e-5)
    assert log_ml(0, 40) == pytest.approx(np.log1p(3.0), abs=1e-5)


def test_a_lesion_beyond_the_cohort_capacity_is_extrapolated_linearly():
    # a cohort whose capacity was 16 ml meets a lesion of 20 -> 40 ml: not held at 16 ml
    volumes = torch.tensor([[[20.0], [30.0], [40.0]]])
    years = torch.tensor([[-1.5, -1.0, -0.5]])
    valid, ref = torch.ones(1, 3, dtype=torch.bool), torch.tensor([2])
    weights = torch.tensor([[0.0, 0.0, 0.95]])
    log_volume = extrapolated_log_volume(volumes, years, valid, ref, weights, torch.tensor([16.0]))
    assert float(log_volume.expm1()) == pytest.approx(50.0, rel=1e-4)  # the line


def _gompertz(k: float, v0: float, rate: float, days: np.ndarray) -> np.ndarray:
    return k * np.exp(np.log(v0 / k) * np.exp(-rate * days / 365.25))


def test_gompertz_at_target_continues_a_gompertz_curve_exactly():
    days = np.array([0.0, 120.0, 300.0, 420.0])  # irregular visits, target at 420 days
    volumes = torch.tensor(_gompertz(16.0, 2.0, 1.5, days[:3]), dtype=torch.float64)
    years = torch.tensor((days[:3] - days[3]) / 365.25)
    forecast = gompertz_at_target(
        volumes.reshape(1, 3, 1),
        years[None],
        torch.ones(1, 3, dtype=torch.bool),
        torch.tensor([16.0], dtype=torch.float64),
    )
    assert float(forecast) == pytest.approx(_gompertz(16.0, 2.0, 1.5, days[3:])[0], rel=1e-9)
    # an empty lesion stays (nearly) empty
    empty = gompertz_at_target(
        torch.zeros(1, 3, 1),
        years[None].float(),
        torch.ones(1, 3, dtype=torch.bool),
        torch.tensor([16.0]),
    )
    assert float(empty) < 1e-2


def _cases(volume_law, n: int = 30, seed: int = 0):
    """n future cases of 3 visits each, volumes from ``volume_law(v0, rate, days)``."""
    rng = np.random.default_rng(seed)
    volumes, years, truth = [], [], []
    for _ in range(n):
        days = np.concatenate([[0.0], np.cumsum(rng.uniform(45, 240, size=3))])
        v = volume_law(rng.uniform(1.0, 4.0), rng.uniform(0.8, 2.5), days)
        volumes.append(np.stack([v[:3], 1.5 * v[:3]], axis=-1))
        years.append((days[:3] - days[3]) / 365.25)
        truth.append([v[3], 1.5 * v[3]])
    f = torch.float32
    return (
        torch.tensor(np.array(volumes), dtype=f),
        torch.tensor(np.array(years), dtype=f),
        torch.ones(n, 3, dtype=torch.bool),
        torch.full((n,), 2),
        torch.tensor(truth, dtype=f),
    )


def test_fit_growth_prior_finds_the_carrying_capacity_of_gompertz_growth():
    capacity, weight = fit_growth_prior(*_cases(lambda v0, r, d: _gompertz(16.0, v0, r, d)))
    # the grid's nearest capacities (steps of 2^(1/4)), per volume type
    assert capacity[0] == pytest.approx(16.0, rel=0.1)
    assert capacity[1] == pytest.approx(24.0, rel=0.1)
    assert weight.tolist() == pytest.approx([0.95, 0.95])


def test_fit_growth_prior_keeps_linear_extrapolation_for_linear_growth():
    _, weight = fit_growth_prior(*_cases(lambda v0, r, d: v0 + r * d / 365.25))
    assert weight.tolist() == [0.0, 0.0]


def test_sized_label_sizes_the_label_to_the_volumes():
    torch.manual_seed(0)
    probs = torch.distributions.Dirichlet(torch.ones(3)).sample((1, 8, 8, 8)).movedim(-1, 1)
    label = sized_label(
        probs, torch.tensor([[0.64, 1.28]]), torch.tensor([0.064]), torch.zeros(1, 8, 8, 8)
    )
    assert label.shape == (1, 8, 8, 8) and label.dtype == torch.int64
    assert int((label == 1).sum()) == 10 and int((label > 0).sum()) == 20
    assert probs[:, 1][label == 1].min() >= probs[:, 1][label == 0].max()
    # whole lesion: the core plus the 10 most likely (core + edema) voxels outside it
    lesion = probs[:, 1] + probs[:, 2]
    assert lesion[label == 2].min() >= lesion[label == 0].max()


def test_sized_label_grows_and_shrinks_a_lesion_from_its_reference_shape():
    reference = torch.zeros(2, 9, 9, 9, dtype=torch.int64)
    reference[:, 3:6, 3:6, 3:6] = 1
    probs = torch.full((2, 3, 9, 9, 9), 1 / 3)  # an uninformed network
    vox = torch.tensor([0.001, 0.001])
    volumes = torch.tensor([[0.040, 0.040], [0.010, 0.010]])  # grow to 40, shrink to 10 voxels
    grown, shrunk = sized_label(probs, volumes, vox, reference)
    assert int((grown == 1).sum()) == 40 and bool((grown[reference[0] == 1] == 1).all())
    ring = torch.nonzero((grown == 1) & (reference[0] == 0))
    assert ring.min() >= 2 and ring.max() <= 6  # grows at its border
    assert int((shrunk == 1).sum()) == 10 and bool((reference[1][shrunk == 1] == 1).all())


def _ranked_over_the_whole_map(probs, volumes, vox, reference, sigma=1.5):
    """sized_label's rule, written out plainly: every voxel's score, then the top counts."""
    masks = torch.stack([reference == 1, reference > 0], dim=1).float()
    near = gaussian_blur(masks, torch.tensor(sigma), radius=3)  # cut at 2 sigma
    scores = torch.stack([probs[:, 1], probs[:, 1] + probs[:, 2]], dim=1) + 2 * masks + near
    label = torch.zeros_like(reference)
    for i in range(len(probs)):
        core_n, lesion_n = (round(float(v) / float(vox[i])) for v in volumes[i])
        core = torch.zeros(scores[i, 0].numel(), dtype=torch.bool)
        core[scores[i, 0].flatten().topk(core_n).indices] = True
        lesion = torch.zeros_like(core)
        lesion_scores = scores[i, 1].flatten().masked_fill(core, math.inf)
        lesion[lesion_scores.topk(max(lesion_n, core_n)).indices] = True
        label[i] = (2 * lesion.long() - core.long()).reshape(reference[i].shape)
    return label


@pytest.mark.parametrize("trial", range(12))
def test_sized_label_ranks_in_the_lesion_box_as_over_the_whole_map(trial):
    gen = torch.Generator().manual_seed(trial)
    shape = (20, 24, 22)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij"))
    reference = torch.zeros(2, *shape, dtype=torch.int64)
    for i in range(2 - (trial % 4 == 0)):  # every 4th trial: a case without a lesion
        centre = torch.tensor([6 + int(torch.randint(n - 12, (), generator=gen)) for n in shape])
        dist = (grid - centre.reshape(3, 1, 1, 1)).float().norm(dim=0)
        radius = 2 + int(torch.randint(3, (), generator=gen))
        reference[i][dist < radius + 1.5] = 2
        reference[i][dist < radius] = 1
    logits = torch.randn(2, 3, *shape, generator=gen) * (1 + trial % 3)
    logits[:, 1] += 3.0 * (reference == 1)
    logits[:, 2] += 3.0 * (reference == 2)
    if trial % 3 == 0:  # confident voxels far from the lesion: the box is not enough
        logits[:, 1:, :3] += 8.0
    probs = logits.softmax(dim=1)
    vox = torch.tensor([0.027, 0.027])
    sizes = torch.stack([(reference == 1).sum((1, 2, 3)), (reference > 0).sum((1, 2, 3))], 1)
    growth = torch.empty(2, 1).uniform_(0.2, 4.0, generator=gen)  # shrink to 0.2x, grow to 4x
    volumes = (sizes * growth + torch.rand(2, 2, generator=gen) * 8).round() * 0.027
    expected = _ranked_over_the_whole_map(probs, volumes, vox, reference)
    assert torch.equal(sized_label(probs, volumes, vox, reference), expected)


@pytest.mark.parametrize(
    "law",
    [
        lambda v0, r, d: v0 * np.exp(0.6 * r * d / 365.25),  # exponential: no capacity
        lambda v0, r, d: 16.0 / (1 + (16.0 / v0 - 1) * np.exp(-r * d / 365.25)),  # logistic
        lambda v0, r, d: _gompertz(6.0 + 8.0 * v0, v0, r, d),  # a capacity per patient
    ],
    ids=["exponential", "logistic", "gompertz-per-patient-capacity"],
)
def test_fit_growth_prior_beats_linear_extrapolation_on_held_out_cases_of_other_growth_laws(law):
    capacity, weight = fit_growth_prior(*_cases(law, n=40, seed=0))
    volumes, years, valid, ref, truth = _cases(law, n=200, seed=1)
    fitted = torch.zeros(2, 3)
    fitted[:, 2] = weight

    def core_mae(weights: torch.Tensor) -> float:
        log_volume = extrapolated_log_volume(volumes, years, valid, ref, weights, capacity)
        return float((log_volume[:, 0].expm1() - truth[:, 0]).abs().mean())

    assert core_mae(fitted) < 0.9 * core_mae(torch.zeros(2, 3))
