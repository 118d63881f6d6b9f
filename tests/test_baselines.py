"""Baselines: copy-last is exact when nothing changes; extrapolation recovers its own law."""

from __future__ import annotations

import numpy as np
import pytest

from mtlgen.data.dataset import encode_context
from mtlgen.evaluate.metrics import brain_region, dice, region_mae
from mtlgen.inference.baselines import (
    CopyLast,
    VolumeExtrapolation,
    carried_images,
    fit_volume,
    make_baseline,
    reference_visit,
)
from mtlgen.io.series import VisitArrays
from mtlgen.models.mtl_net import reference_image

AFFINE = np.eye(4)  # 1 mm voxels: 1000 voxels = 1 mL
SHAPE = (20, 20, 20)


def _visit(days: float, core_voxels: int, seed: int = 0, name: str | None = None) -> VisitArrays:
    label = np.zeros(int(np.prod(SHAPE)), np.uint8)
    label[:core_voxels] = 1
    rng = np.random.default_rng(seed)
    image = rng.random(SHAPE).astype(np.float32)
    return VisitArrays(name or f"v{int(days)}", days, {"T1w": image}, label.reshape(SHAPE), AFFINE)


def test_copy_last_is_exact_when_nothing_changes():
    context = [_visit(0, 300, seed=1), _visit(100, 500, seed=2)]
    target = _visit(250, 500, seed=2, name="target")  # identical to the last visit
    pred = CopyLast().predict(context, target.days)
    assert dice(pred.label > 0, target.label > 0) == 1.0
    brain = brain_region(target.images["T1w"], 0.1, 1.0)
    assert region_mae(pred.images["T1w"], target.images["T1w"], brain) == 0.0
    assert pred.core_volume_ml == pytest.approx(0.5)
    assert pred.status == "stable"
    # the prediction is a copy: editing it leaves the context untouched
    pred.images["T1w"][:] = 0
    assert context[-1].images["T1w"].any()


def test_a_contrast_the_reference_lacks_is_carried_forward_as_the_model_does():
    a, b, c = _visit(0, 100, seed=1), _visit(100, 200, seed=2), _visit(300, 300, seed=3)
    for visit, seed in ((a, 4), (c, 5)):  # FLAIR at the first and the last visit only
        visit.images["FLAIR"] = np.random.default_rng(seed).random(SHAPE).astype(np.float32)
    future = CopyLast().predict([a, b], 250)  # reference b has no FLAIR: a's
    assert future.images["T1w"] is not b.images["T1w"]
    assert np.array_equal(future.images["T1w"], b.images["T1w"])
    assert np.array_equal(future.images["FLAIR"], a.images["FLAIR"])
    gap = VolumeExtrapolation("linear", 0.25, 0.25).predict([b, c], 200)  # nothing before: c's
    assert np.array_equal(gap.images["FLAIR"], c.images["FLAIR"])
    for context, days in (([a, b], 250), ([a, b, c], 200), ([b, c], 200)):
        batch = encode_context(context, days, ["T1w", "FLAIR"], 3)
        model = reference_image(
            batch["images"][None], batch["contrast_present"][None], batch["ref_slot"][None]
        )[0].numpy()
        carried = carried_images(context, days)
        assert np.array_equal(model[0], carried["T1w"])
        assert np.array_equal(model[1], carried["FLAIR"])


def test_reference_visit_for_future_and_reconstruction():
    context = [_visit(0, 1), _visit(100, 1), _visit(300, 1)]
    assert reference_visit(context[:2], 250).days == 100  # future: the last one
    assert reference_visit(context, 200).days == 100  # gap: the visit just before it
    assert reference_visit(context[1:], 50).days == 100  # nothing before: the earliest
    with pytest.raises(ValueError, match="at least one"):
        reference_visit([], 10)


def test_exponential_recovers_an_exponential_series():
    # 0.1 mL doubling every 100 days -> 0.8 mL at day 300
    context = [_visit(0, 100), _visit(100, 200), _visit(200, 400)]
    exp = VolumeExtrapolation("exponential", increase=0.25, decrease=0.25)
    pred = exp.predict(context, 300)
    assert pred.core_volume_ml == pytest.approx(0.8, rel=1e-9)
    assert pred.status == "progressive"
    assert exp.fallbacks == 0
    # linear under-shoots an exponential: it must not agree
    lin = VolumeExtrapolation("linear", 0.25, 0.25).predict(context, 300)
    assert lin.core_volume_ml < 0.7


def test_linear_recovers_a_linear_series_and_clips_at_zero():
    context = [_visit(0, 300), _visit(100, 400), _visit(200, 500)]
    lin = VolumeExtrapolation("linear", 0.25, 0.25)
    assert lin.predict(context, 300).core_volume_ml == pytest.approx(0.6, rel=1e-9)
    shrinking = [_visit(0, 400), _visit(100, 200)]
    pred = lin.predict(shrinking, 400)
    assert pred.core_volume_ml == 0.0
    assert pred.status == "responding"


def test_one_context_visit_falls_back_to_copy_last():
    exp = VolumeExtrapolation("exponential", 0.25, 0.25)
    pred = exp.predict([_visit(0, 250)], 120)
    assert pred.core_volume_ml == pytest.approx(0.25)
    assert pred.status == "stable"
    assert exp.fallbacks == 1
    # an exponential fit ignores empty labels; one positive volume is not enough either
    assert fit_volume([0, 100], [0.0, 1.0], 200, "exponential") is None
    assert fit_volume([0, 100], [0.0, 1.0], 200, "linear") == pytest.approx(2.0)


def test_baselines_by_name_and_bad_input():
    assert make_baseline("copy_last", 0.25, 0.25).name == "copy_last"
    assert make_baseline("exponential", 0.25, 0.25).name == "exponential"
    with pytest.raises(ValueError, match="expected one of"):
        make_baseline("quadratic", 0.25, 0.25)
    with pytest.raises(ValueError, match="expected 'linear' or 'exponential'"):
        fit_volume([0, 1], [1, 2], 3, "cubic")
    unlabelled = VisitArrays("v0", 0.0, {"T1w": np.zeros(SHAPE, np.float32)}, None, AFFINE)
    with pytest.raises(ValueError, match="no label"):
        CopyLast().predict([unlabelled], 10)
