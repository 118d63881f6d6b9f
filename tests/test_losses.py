"""Task losses, loss weighting, PCGrad and the task-affinity measure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mtlgen.losses.affinity import gradient_cosine
from mtlgen.losses.pcgrad import pcgrad
from mtlgen.losses.tasks import mask_loss, task_losses
from mtlgen.losses.weighting import LossWeighting
from mtlgen.train.records import write_affinity

TASKS = ("seg", "future_seg", "progression", "image")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_mask_loss_prefers_the_right_segmentation():
    target = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5, 2:5] = 1
    right = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 20
    wrong = torch.nn.functional.one_hot(torch.zeros_like(target), 3).movedim(-1, 1).float() * 20
    assert float(mask_loss(right, target)) < 0.1 < 1.0 < float(mask_loss(wrong, target))


def test_image_loss_ignores_missing_target_contrasts_and_volume_loss_is_robust():
    target = torch.rand(1, 2, 6, 6, 6)
    pred = target.clone()
    pred[:, 1] += 5.0  # the missing contrast may be anything
    batch = {
        "target_image": target,
        "target_present": torch.tensor([[1.0, 0.0]]),
        "target_volume": torch.tensor([[2.0, 3.0]]),
        "status": torch.tensor([0]),
        "masks": torch.zeros(1, 2, 6, 6, 6, dtype=torch.long),
        "ref_slot": torch.tensor([1]),
        "target_mask": torch.zeros(1, 6, 6, 6, dtype=torch.long),
    }
    out = {"image": pred}
    assert float(task_losses(out, batch, ["image"])["image"]) == pytest.approx(0.0, abs=1e-7)
    # an error inside the lesion region costs more than the same error outside it
    batch["target_mask"][0, 2, 2, 2] = 1
    inside, outside = target.clone(), target.clone()
    inside[0, 0, 2, 2, 2] += 1.0
    outside[0, 0, 5, 5, 0] += 1.0
    cost_in = float(task_losses({"image": inside}, batch, ["image"], 0.0)["image"])
    cost_out = float(task_losses({"image": outside}, batch, ["image"], 0.0)["image"])
    assert cost_in > cost_out > 0
    near = {
        "log_volume": batch["target_volume"].log1p(),
        "status_logits": torch.tensor([[9.0, 0, -9]]),
    }
    far = {**near, "log_volume": near["log_volume"] + 10}
    lo = float(task_losses(near, batch, ["progression"])["progression"])
    hi = float(task_losses(far, batch, ["progression"])["progression"])
    assert lo < 1e-3 and hi == pytest.approx(0.5 * (10 - 0.25) + lo, rel=1e-3)  # Huber: linear tail


def _losses(*values):
    return {t: torch.tensor(v) for t, v in zip(TASKS, values, strict=False)}


def test_fixed_weighting_is_the_weighted_sum():
    w = LossWeighting(TASKS, "fixed", {"seg": 2.0, "image": 0.5})
    assert float(w(_losses(1.0, 2.0, 3.0, 4.0))) == pytest.approx(2 + 2 + 3 + 2)


def test_uncertainty_weighting_learns_log_variance_of_each_loss():
    w = LossWeighting(TASKS, "uncertainty")
    opt = torch.optim.SGD(w.parameters(), lr=0.1)
    losses = _losses(0.5, 1.0, 2.0, 4.0)
    for _ in range(300):
        opt.zero_grad()
        w(losses).backward()
        opt.step()
    # minimum of exp(-s) L + s is at s = log L
    assert w.log_var.detach().tolist() == pytest.approx(
        [math.log(v) for v in (0.5, 1, 2, 4)], abs=1e-3
    )


def test_dwa_upweights_the_task_whose_loss_falls_slowest():
    w = LossWeighting(TASKS, "dwa", temperature=2.0)
    assert w.weights().tolist() == [1.0] * 4
    w.end_epoch(dict(zip(TASKS, (1.0, 1.0, 1.0, 1.0), strict=True)))
    assert w.weights().tolist() == [1.0] * 4
    w.end_epoch(dict(zip(TASKS, (0.5, 0.9, 1.0, 1.2), strict=True)))
    weights = w.weights()
    assert float(weights.sum()) == pytest.approx(4.0)
    assert weights.argsort().tolist() == [0, 1, 2, 3]
    expected = 4 * torch.softmax(torch.tensor([0.5, 0.9, 1.0, 1.2]) / 2.0, 0)
    assert torch.allclose(weights, expected)


def test_pcgrad_removes_the_conflict_of_a_conflicting_pair():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    assert torch.dot(g1, g2) < 0
    total = pcgrad([g1, g2], torch.Generator().manual_seed(0))
    p1 = g1 - torch.dot(g1, g2) / g2.dot(g2) * g2
    p2 = g2 - torch.dot(g2, g1) / g1.dot(g1) * g1
    assert torch.allclose(total, p1 + p2)
    assert torch.dot(p1, g2) >= -1e-7 and torch.dot(p2, g1) >= -1e-7
    assert torch.dot(total, g1) >= 0 and torch.dot(total, g2) >= 0
    aligned = [torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.5])]
    assert torch.equal(pcgrad(aligned), aligned[0] + aligned[1])


def test_gradient_cosine_is_symmetric_with_unit_diagonal(tmp_path):
    grads = [torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 1, 0]), torch.tensor([-1.0, 0, 0])]
    m = gradient_cosine(grads)
    assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1)
    assert m[0, 1] == pytest.approx(1 / math.sqrt(2)) and m[0, 2] == pytest.approx(-1)
    json_path, png = write_affinity([m, m * 0.5 + np.eye(3) * 0.5], ["a", "b", "c"], tmp_path)
    record = json.loads(json_path.read_text())
    assert record["tasks"] == ["a", "b", "c"] and len(record["epochs"]) == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
