"""Intensity harmonisation that no lesion can move (mtlgen.preprocess.intensity): the scale of a
scan is taken on normal tissue, and a follow-up keeps its baseline's normal-tissue intensity
while its lesion grows from about 1 to over 100 mL."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import ndimage

from mtlgen.config import SynthConfig
from mtlgen.io.series import load_visit
from mtlgen.preprocess.intensity import match_bias_field, match_reference, scale_on_tissue
from mtlgen.register.run import register_source
from mtlgen.registry.series import load_series
from mtlgen.synth.cohort import write_cohort


def _head_phantom(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 40^3 field of view: dark noisy background, a ball of tissue around 100."""
    zyx = np.indices((40, 40, 40)) - 19.5
    ball = (zyx**2).sum(0) < 15**2
    image = rng.normal(2.0, 0.5, ball.shape) + ball * rng.normal(100.0, 5.0, ball.shape)
    return image.astype(np.float32), ball


def test_scale_on_tissue_maps_background_to_0_and_the_head_median_to_the_tissue_value():
    image, ball = _head_phantom(np.random.default_rng(0))
    inside = np.ones_like(ball)
    inside[0] = False
    out = scale_on_tissue(image, inside, 1.0, 0.75)
    assert out.dtype == np.float32 and (out[0] == 0).all()
    assert np.median(out[ball & inside]) == pytest.approx(0.75, rel=0.01)
    assert np.percentile(out[inside], 1.0) == pytest.approx(0.0, abs=1e-6)
    # a bright lesion filling 10% of the head moves the scale by little; the 99th percentile
    # would follow the lesion
    lesion = ball & (np.indices(ball.shape)[0] < 11)
    assert 0.08 < lesion.sum() / ball.sum() < 0.15
    bright = np.where(lesion, 2.5 * image, image)
    normal = ball & ~lesion & inside
    shift = np.median(scale_on_tissue(bright, inside, 1.0, 0.75)[normal]) / np.median(out[normal])
    assert abs(shift - 1) < 0.06


def test_match_reference_recovers_the_gain_despite_a_changed_region():
    rng = np.random.default_rng(1)
    reference, ball = _head_phantom(rng)
    follow = 1.2 * reference * rng.normal(1.0, 0.02, reference.shape).astype(np.float32)
    grown = ball & (np.indices(ball.shape)[1] < 15)  # a lesion grown over a fifth of the head
    follow[grown] *= 2.0
    matched, ratio = match_reference(follow, reference, ball)
    assert ratio == pytest.approx(1.2, rel=0.005)
    normal = ball & ~grown
    assert np.median(matched[normal] / reference[normal]) == pytest.approx(1.0, abs=0.005)
    same, one = match_reference(follow, reference, np.zeros_like(ball))
    assert one == 1.0 and same is follow  # too few voxels: left alone


@pytest.fixture(scope="module")
def growing_lesion(tmp_path_factory, register_params):
    """One patient at 4 mm whose lesion (core + edema) grows from about 1 to over 100 mL over 6
    visits, registered for real."""
    root = tmp_path_factory.mktemp("grow")
    cfg = SynthConfig(
        patients=1,
        workers=1,
        spacing_mm=4.0,
        visits_min=6,
        visits_max=6,
        interval_days_min=150,
        interval_days_max=220,
        lesion_volume_ml=(0.5, 0.8),
        lesion_max_volume_ml=50.0,
        growth_rate_per_year=(2.0, 2.5),
        fraction_stable=0.0,
        fraction_responding=0.0,
        missing_contrast_prob=0.0,
    )
    write_cohort(cfg, 5, root / "bids", progress=False)
    params = register_params(root)
    register_source(root / "bids", params, progress=False)
    with (root / "bids/derivatives/groundtruth/visits.tsv").open() as fh:
        lesion_ml = [
            float(r["core_ml"]) + float(r["edema_ml"]) for r in csv.DictReader(fh, delimiter="\t")
        ]
    return load_series(params.registry.url)[0], lesion_ml


def test_normal_tissue_keeps_its_intensity_while_the_lesion_grows(growing_lesion):
    series, lesion_ml = growing_lesion
    assert lesion_ml[0] < 2.0 and lesion_ml[-1] > 100.0
    visits = [load_visit(v) for v in series.visits]
    changed = np.zeros(visits[0].label.shape, bool)
    for v in visits:
        changed |= v.label > 0
    normal = ~ndimage.binary_dilation(changed, iterations=3)  # 9 mm clear of any lesion
    for contrast in ("T1w", "FLAIR"):
        levels = []
        for v in visits:
            image = v.images[contrast]
            head = ndimage.binary_erosion(image > 0.3, iterations=2)
            levels.append(float(np.median(image[head & normal])))
        drift = np.abs(np.array(levels) / levels[0] - 1)
        print(contrast, " ".join(f"{x:.3f}" for x in levels), f"max drift {drift.max():.4f}")
        assert drift.max() <= 0.02, (contrast, levels)


def _bias(shape: tuple[int, int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth multiplicative field: log-normal nodes 20 voxels apart, interpolated."""
    coarse = rng.normal(0.0, strength, (3, 3, 3))
    return np.exp(ndimage.zoom(coarse, np.array(shape) / 3, order=1)).astype(np.float32)


def test_match_bias_field_removes_a_smooth_field_and_keeps_the_lesion_change():
    rng = np.random.default_rng(2)
    reference, ball = _head_phantom(rng)
    reference = reference * _bias(reference.shape, rng, 0.1)
    true_field = _bias(reference.shape, rng, 0.2)
    follow = reference * true_field
    offset = np.indices(ball.shape) - np.array([20, 12, 20])[:, None, None, None]
    grown = ball & ((offset**2).sum(0) < 6**2)  # a lesion of about 900 voxels, twice as bright
    follow[grown] *= 2.0
    follow *= rng.normal(1.0, 0.02, follow.shape).astype(np.float32)
    matched, field = match_bias_field(follow, reference, ball, 4.0, (1.0, 1.0, 1.0))
    normal = ball & ~ndimage.binary_dilation(grown, iterations=2)
    bias = np.median(np.abs(np.log(true_field[normal])))
    missed = np.median(np.abs(np.log(field[normal] / true_field[normal])))
    assert bias > 0.05 and missed < 0.25 * bias, (bias, missed)
    # the lesion is change, not bias: it keeps its contrast to the reference
    assert np.median(matched[grown] / reference[grown]) == pytest.approx(2.0, rel=0.03)
    assert field.shape == follow.shape and field.dtype == np.float32
    same, ones = match_bias_field(follow, reference, np.zeros_like(ball), 4.0, (1.0, 1.0, 1.0))
    assert same is follow and (ones == 1).all()  # too few voxels: left alone
