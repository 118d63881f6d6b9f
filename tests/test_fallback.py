"""The image fallback: the model's change from copy-last, kept where it beat copy-last on
calibration cases and dropped where it did not."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtlgen.inference.fallback import (
    FALLBACK_FILE,
    FallbackErrors,
    ImageFallback,
    load_fallback,
    near_lesion,
)
from mtlgen.inference.model import ModelPredictor
from mtlgen.io.series import load_visit
from mtlgen.models.mtl_net import MultiTaskNet


def _case(rng: np.random.Generator):
    """Copy-last, truth and a model that is exact near the lesion and noisy far from it."""
    shape = (12, 12, 12)
    label = np.zeros(shape, np.uint8)
    label[5:7, 5:7, 5:7] = 1
    near = near_lesion(label, (2.0, 2.0, 2.0), 4.0)
    copy = rng.normal(0.5, 0.1, shape).astype(np.float32)
    truth = copy + np.where(near, 0.3, 0.0).astype(np.float32)  # the lesion grew
    model = np.where(near, truth, truth + rng.normal(0, 0.2, shape)).astype(np.float32)
    return label, near, copy, truth, model


def test_near_lesion_is_the_lesion_grown_by_a_distance_in_mm():
    label = np.zeros((9, 9, 9), np.uint8)
    label[4, 4, 4] = 2
    near = near_lesion(label, (2.0, 2.0, 2.0), 4.0)
    assert near[4, 4, 4] and near[4, 4, 6] and not near[4, 4, 7] and not near[4, 6, 6]
    assert not near_lesion(np.zeros((3, 3, 3)), (1.0, 1.0, 1.0), 5.0).any()


def test_the_fit_keeps_the_change_where_it_helps_and_drops_it_where_it_hurts():
    rng = np.random.default_rng(0)
    errors = FallbackErrors()
    for _ in range(3):
        _, near, copy, truth, model = _case(rng)
        brain = np.ones(near.shape, bool)
        errors.add("future:2+", "FLAIR", model, copy, truth, near, brain)
    fallback = ImageFallback.fit(errors, near_mm=4.0)
    assert fallback.weight("future", 3, "near", "FLAIR") == 1.0
    assert fallback.weight("future", 3, "far", "FLAIR") == 0.0
    # a group without cases borrows its kind's, then all cases' weights; none fitted: 1
    assert fallback.weight("future", 1, "far", "FLAIR") == 0.0  # the kind's
    assert fallback.weight("reconstruction", 1, "far", "FLAIR") == 0.0  # all cases'
    assert fallback.weight("future", 3, "far", "T1w") == 1.0
    # applied: exact near the lesion, copy-last far from it
    _label, near, copy, truth, model = _case(rng)
    out = fallback.apply("future", 3, {"FLAIR": model}, {"FLAIR": copy}, near)["FLAIR"]
    assert np.allclose(out[near], truth[near]) and np.array_equal(out[~near], copy[~near])
    # a middle weight shrinks the change
    half = ImageFallback({"all": {"near": {"FLAIR": 0.5}, "far": {"FLAIR": 0.5}}}, 4.0)
    out = half.apply("future", 1, {"FLAIR": model}, {"FLAIR": copy}, near)["FLAIR"]
    assert np.allclose(out, (model + copy) / 2)


def test_a_fallback_is_saved_and_loaded_and_a_broken_file_is_named(tmp_path):
    assert load_fallback(tmp_path) is None
    fallback = ImageFallback({"future:1": {"near": {"T1w": 0.35}}}, 15.0)
    fallback.save(tmp_path)
    assert load_fallback(tmp_path) == fallback
    (tmp_path / FALLBACK_FILE).write_text(json.dumps({"weights": {}}))
    with pytest.raises(ValueError, match=r"fallback.json: not an image fallback"):
        load_fallback(tmp_path)


def test_a_predictor_with_a_zero_fallback_answers_copy_last_images(aligned_series):
    torch.manual_seed(0)
    net = MultiTaskNet(max_context=2, features=[4, 8, 16], time_dim=8, heads=2)
    with torch.no_grad():  # a residual that moves the image: the fallback must undo it
        head = net.target_heads["shared"]
        start, _ = net.target_rows["image"]
        head.out[start : start + 2].normal_(0, 0.5)
        head.out_bias[start : start + 4].fill_(0.3)  # residual and its gate
    visits = [load_visit(v) for v in aligned_series[0].visits[:3]]
    context, target = visits[:2], visits[2]
    raw = ModelPredictor(net).predict(context, target.days)
    zero = {r: {"T1w": 0.0, "FLAIR": 0.0} for r in ("near", "far")}
    dropped = ModelPredictor(net, fallback=ImageFallback({"all": zero}, 15.0))
    pred = dropped.predict(context, target.days)
    for contrast, image in pred.images.items():
        last = next(v for v in reversed(context) if contrast in v.images)
        assert np.allclose(image, last.images[contrast], atol=1e-6), contrast
        assert not np.allclose(raw.images[contrast], image)
    assert np.array_equal(pred.label, raw.label)  # masks and volumes are untouched
    assert pred.core_volume_ml == raw.core_volume_ml
