"""The multi-task network: sharing strategies, time conditioning, heads, checkpoints, predictor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import default_collate

from mtlgen.config import DataConfig
from mtlgen.data.dataset import LongitudinalDataset
from mtlgen.inference.model import load_predictor
from mtlgen.io.series import load_visit
from mtlgen.models.blocks import HEAD_SLOPE, PointwiseHead, upsample_linear
from mtlgen.models.labels import class_labels
from mtlgen.models.mtl_net import TASKS, MultiTaskNet, reference_image
from mtlgen.models.sharing import HardTrunk, MtanTrunk, SoftTrunk
from mtlgen.progression import lesion_volumes_ml

SMALL = {"features": (4, 8, 16), "time_dim": 8, "heads": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def batch(tiny_series):
    ds = LongitudinalDataset(tiny_series, DataConfig(augment=False, mask_dropout=0.5), 0.25, 0.25)
    return default_collate([ds[i] for i in (1, 2)])


def _net(sharing="hard", tasks=TASKS, **kw) -> MultiTaskNet:
    torch.manual_seed(0)
    return MultiTaskNet(tasks=tasks, sharing=sharing, **{**SMALL, **kw})


@pytest.mark.parametrize("sharing", ["hard", "soft", "mtan", "cross_task"])
def test_every_sharing_strategy_trains_every_head(sharing, batch):
    net = _net(sharing)
    out = net(batch)
    assert out["seg_decoded"].shape == (2, 3)
    decoded = int(out["seg_decoded"].sum())
    assert out["seg_logits"].shape == (decoded, 3, 16, 16, 16)
    assert out["future_logits"].shape == (2, 3, 16, 16, 16)
    assert out["image"].shape == (2, 2, 16, 16, 16)
    assert out["log_volume"].shape == (2, 2) and out["status_logits"].shape == (2, 3)
    loss = sum(v.float().square().mean() for v in out.values()) + net.penalty()
    loss.backward()
    assert net.feature_tasks == ("seg", "future_seg", "image")
    for task in net.feature_tasks:
        grads = [p.grad for p in net.trunk.affinity_parameters(task)]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), task
    assert net.log_tau.grad.abs() > 0  # the status temperature; the growth prior is fitted


def test_hard_sharing_uses_one_encoder_for_all_tasks():
    net = _net("hard")
    assert isinstance(net.trunk, HardTrunk)
    params = [net.trunk.affinity_parameters(t) for t in net.feature_tasks]
    assert all(all(a is b for a, b in zip(params[0], p, strict=True)) for p in params[1:])
    soft = _net("soft")
    assert not any(
        a is b
        for a, b in zip(
            soft.trunk.affinity_parameters("seg"),
            soft.trunk.affinity_parameters("image"),
            strict=True,
        )
    )


def test_hard_sharing_shares_the_target_head_and_the_image_starts_at_its_prior(batch):
    net = _net("hard")
    assert list(net.target_heads) == ["shared"] and list(net.target_decoders) == ["shared"]
    assert list(_net("soft").target_heads) == ["future_seg", "image"]
    head = net.target_heads["shared"]
    (f0, f1), (i0, i1) = net.target_rows["future_seg"], net.target_rows["image"]
    assert (f1 - f0, i1 - i0) == (3, 4) and head.out.shape[0] == 7
    net.eval()
    with torch.no_grad():
        out = net(batch)
        head.out[i0 + 2 :].normal_()  # image gate rows: the residual rows are still zero
        after_gate = net(batch)
        head.out[i0 : i0 + 2].normal_()  # image residual rows
        after_residual = net(batch)
        head.features.weight.mul_(2.0)  # the shared hidden layer
        after_hidden = net(batch)
    assert torch.equal(out["image"], after_gate["image"]), "a zero residual: the prior"
    assert torch.equal(out["future_logits"], after_residual["future_logits"])
    assert not torch.allclose(out["image"], after_residual["image"])
    assert not torch.allclose(out["future_logits"], after_hidden["future_logits"])
    assert not torch.allclose(after_residual["image"], after_hidden["image"])


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_soft_penalty_is_zero_for_identical_encoders_and_grows_with_difference(kind):
    net = _net("soft", soft_penalty=kind, soft_lambda=0.1)
    trunk: SoftTrunk = net.trunk
    first = trunk.encoders["seg"].state_dict()
    first_fusion = trunk.fusions["seg"].state_dict()
    for t in net.feature_tasks:
        trunk.encoders[t].load_state_dict(first)
        trunk.fusions[t].load_state_dict(first_fusion)
    assert float(net.penalty().detach()) == 0.0
    values = []
    for scale in (0.01, 0.02):
        with torch.no_grad():
            trunk.encoders["image"].load_state_dict(first)
            for p in trunk.encoders["image"].parameters():
                p.add_(scale)
        values.append(float(net.penalty().detach()))
    assert 0 < values[0] < values[1]
    n = sum(p.numel() for p in trunk.encoders["image"].parameters())
    # one of the three trunk tasks off by s: deviations 2s/3 and s/3 (x2) from the mean
    third = 0.02 / 3
    expected = (
        n * ((2 * third) ** 2 + 2 * third**2) if kind == "l2" else n * (2 * third + 2 * third)
    )
    assert values[1] == pytest.approx(0.1 * expected, rel=1e-3)


def test_mtan_masks_are_per_task_and_gate_shared_features(batch):
    net = _net("mtan")
    trunk: MtanTrunk = net.trunk
    x = torch.randn(4, 7, 16, 16, 16)
    feats = trunk.encoder(x)
    masks = {t: trunk.masks(feats, t) for t in net.feature_tasks}
    assert all(len(m) == 3 and m[0].shape == feats[0].shape for m in masks.values())
    assert all(((m > 0) & (m < 1)).all() for ms in masks.values() for m in ms)
    assert not torch.allclose(masks["seg"][1], masks["image"][1])
    years, valid, ref = -torch.rand(2, 2), torch.ones(2, 2, dtype=torch.bool), torch.tensor([1, 1])
    out = trunk(x, years, valid, ref)
    assert torch.allclose(out["seg"].visits[0], masks["seg"][0] * feats[0])


def test_cross_task_attention_mixes_information_between_tasks(batch):
    net = _net("cross_task")
    with torch.no_grad():
        before = net(batch)["future_logits"].clone()
        for p in net.trunk.cross.project["image"].parameters():
            p.add_(0.5)
        after = net(batch)["future_logits"]
    assert not torch.allclose(before, after), "future_seg must see the image task's features"


def test_target_time_conditions_the_prediction(batch):
    net = _net()
    with torch.no_grad():
        net.growth_weights[:, 2] = 0.5
        a = net(batch)
        shifted = {**batch, "years": batch["years"] - 0.5}
        b = net(shifted)
    assert not torch.allclose(a["image"], b["image"])
    assert not torch.allclose(a["log_volume"], b["log_volume"])


def test_a_given_future_volume_sizes_the_future_label_and_the_image(batch):
    net = _net().eval()
    vox = batch["voxel_ml"]
    given = torch.tensor([[3.0, 5.0], [0.0, 0.0]]) * (40 * vox[:, None])  # 120/200, 0 voxels
    with torch.no_grad():
        forecast = net(batch)
        sized = net({**batch, "future_volume_ml": given})
    for i in range(2):
        core, lesion = lesion_volumes_ml(sized["future_label"][i].numpy(), float(vox[i]))
        assert (core, lesion) == pytest.approx(tuple(given[i].tolist()), rel=1e-4)
    assert not torch.equal(forecast["future_label"], sized["future_label"])
    assert not torch.allclose(forecast["image"], sized["image"])
    assert torch.equal(forecast["log_volume"], sized["log_volume"])  # the forecast itself stays


def test_progression_starts_at_linear_extrapolation_and_needs_no_trunk(batch):
    net = _net(tasks=("progression",))
    assert net.trunk is None and net.feature_tasks == ()
    with torch.no_grad():
        out = net(batch)
    valid, years = batch["visit_valid"], batch["years"]
    for i in range(2):  # least-squares line of the context core volumes, read at the target
        n = int(valid[i].sum())
        assert n >= 2 and bool(batch["mask_present"][i, :n].all())
        core = (batch["masks"][i, :n] == 1).flatten(1).sum(-1) * batch["voxel_ml"][i]
        t, v = years[i, :n].double(), core.double()
        slope = ((t - t.mean()) * (v - v.mean())).sum() / (t - t.mean()).square().sum()
        line = float(v.mean() - slope * t.mean())
        assert float(out["log_volume"][i, 0].expm1()) == pytest.approx(max(line, 0.0), abs=1e-3)


@pytest.mark.parametrize("dims", [2, 3])
def test_pointwise_head_equals_one_layer_over_the_upsampled_features_and_extras(dims):
    gen = torch.Generator().manual_seed(0)
    head = PointwiseHead(dims, 4, 2, extra_channels=(3, 1))
    coarse, size = (5, 6, 4)[:dims], (10, 12, 8)[:dims]
    features = torch.randn(2, 4, *coarse, generator=gen)
    probs, constant = torch.rand(2, 3, *size, generator=gen), torch.randn(2, 1, *([1] * dims))
    mode = "trilinear" if dims == 3 else "bilinear"
    fine = F.interpolate(features, size=size, mode=mode, align_corners=False)
    inputs = torch.cat([fine, probs, constant.expand(-1, -1, *size)], dim=1)
    weight = torch.cat([head.features.weight.flatten(1), *head.extras], dim=1)  # [4, 4 + 3 + 1]
    layer1 = torch.einsum("oc,nc...->no...", weight, inputs)
    hidden = F.leaky_relu(F.instance_norm(layer1), HEAD_SLOPE)
    expected = torch.einsum("oc,nc...->no...", head.out, hidden)
    expected = expected + head.out_bias.reshape(-1, *([1] * dims))
    out = head(features, [probs, constant], size)
    assert out.shape == (2, 2, *size)
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_upsample_linear_equals_interpolate_with_its_gradient(dims):
    mode = "trilinear" if dims == 3 else "bilinear"
    for coarse, size in (
        ((5, 6, 4)[:dims], (10, 12, 8)[:dims]),  # doubling: the hand-written backward pass
        ((1, 6, 2)[:dims], (2, 12, 4)[:dims]),  # doubling of a single voxel's axis
        ((5, 6, 4)[:dims], (9, 7, 8)[:dims]),  # other sizes: F.interpolate
    ):
        x = torch.randn(2, 3, *coarse, requires_grad=True)
        ours = upsample_linear(x, size)
        theirs = F.interpolate(x, size=size, mode=mode, align_corners=False)
        assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-6)
        g = torch.randn_like(ours)
        (grad_ours,) = torch.autograd.grad(ours, x, g)
        (grad_theirs,) = torch.autograd.grad(theirs, x, g)
        assert torch.allclose(grad_ours, grad_theirs, atol=1e-5)
    x = torch.randn(2, 2, *(3, 4, 2)[:dims], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: upsample_linear(t, [2 * n for n in t.shape[2:]]), x)


def test_reference_image_takes_the_latest_visit_that_has_the_contrast():
    images = torch.arange(3.0)[None, :, None, None].expand(1, 3, 2, 4).clone()  # value = slot
    present = torch.tensor([[[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]])
    ref = reference_image(images, present, torch.tensor([1]))
    assert ref[0, 0].unique().tolist() == [1.0]  # slot 1 has contrast 0
    assert ref[0, 1].unique().tolist() == [0.0]  # contrast 1 missing at slot 1 -> slot 0


def test_two_dimensional_network(tiny_series):
    ds = LongitudinalDataset(tiny_series[:1], DataConfig(augment=False), 0.25, 0.25, spatial_dims=2)
    net = _net(spatial_dims=2, sharing="mtan")
    out = net(default_collate([ds[0], ds[1]]))
    assert out["image"].shape == (2, 2, 16, 16) and out["future_logits"].shape == (2, 3, 16, 16)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, batch):
    net = _net("cross_task", contrasts=("T1w", "FLAIR")).eval()
    net.save_pretrained(tmp_path)
    loaded = MultiTaskNet.from_pretrained(tmp_path)
    assert loaded.contrasts == ("T1w", "FLAIR") and loaded.sharing == "cross_task"
    assert not loaded.training
    with torch.no_grad():
        a, b = net(batch), loaded.eval()(batch)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_another_version_is_refused_with_the_reason(tmp_path):
    net = _net("hard", tasks=("progression",))
    net.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    weights["old_head.weight"] = weights.pop("growth_weights")
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.safetensors: weights do not fit.*retrain"):
        MultiTaskNet.from_pretrained(tmp_path)


def test_a_missing_checkpoint_is_an_error_not_a_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope/config.json: checkpoint file not found"):
        MultiTaskNet.from_pretrained(tmp_path / "nope")
    _net().save_pretrained(tmp_path / "half")
    (tmp_path / "half" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model.safetensors: checkpoint file not found"):
        MultiTaskNet.from_pretrained(tmp_path / "half")


def test_predictor_answers_the_protocol_for_mtl_and_single_task(tmp_path, tiny_series):
    visits = [load_visit(v) for v in tiny_series[0].visits]
    for tasks, name in ((TASKS, "mtl-hard"), (("image",), "single-image-copy-last")):
        _net(tasks=tasks).save_pretrained(tmp_path / name)
        predictor = load_predictor(tmp_path / name)
        assert predictor.name == name
        pred = predictor.predict(visits[:2], visits[2].days)
        assert set(pred.images) == {"T1w", "FLAIR"}
        assert pred.label.shape == (16, 16, 16) and pred.label.dtype == np.uint8
        assert pred.status in ("progressive", "stable", "responding")
        assert math.isfinite(pred.core_volume_ml) and pred.core_volume_ml >= 0
        if tasks == TASKS:
            vox = 0.064
            assert lesion_volumes_ml(pred.label, vox)[0] == pytest.approx(
                pred.core_volume_ml, abs=vox
            )
        else:  # copy-last for the tasks it was not trained on
            assert np.array_equal(pred.label, visits[1].label)
            assert pred.core_volume_ml == pytest.approx(
                lesion_volumes_ml(visits[1].label, 0.064)[0]
            )


def test_class_labels_is_argmax_over_the_classes_first_index_on_ties():
    g = torch.Generator().manual_seed(0)
    soft = torch.rand(2, 3, 5, 6, 7, generator=g).softmax(dim=1)
    hard = F.one_hot(torch.randint(0, 3, (2, 5, 6, 7), generator=g), 3).movedim(-1, 1).float()
    ties = torch.zeros(1, 3, 4, 4)
    ties[:, 1:] = 1.0  # core and edema tie: core, as argmax answers
    for probs in (soft, hard.contiguous(), ties, torch.zeros(1, 3, 2, 2)):
        assert torch.equal(class_labels(probs), probs.argmax(dim=1))
