"""The diffusion generator of follow-up residuals: the cube, the conditioning, the objective, a
seeded sampler that learns a conditional distribution, the predictor that keeps the forecast
outside the cube, and training on a registered-shape cohort (deterministic, reloadable)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mtlgen.config import Params
from mtlgen.generative.crops import lesion_box
from mtlgen.generative.crps import ensemble_crps
from mtlgen.generative.labels import labels_from_residuals
from mtlgen.generative.network import ResidualDenoiser
from mtlgen.generative.objective import denoising_loss
from mtlgen.generative.pipeline import ResidualDiffusionPipeline
from mtlgen.generative.schedulers import sampling_scheduler, training_scheduler
from mtlgen.generative.volumes import VolumeSpread, couple, resize_core
from mtlgen.inference.baselines import CopyLast, make_baseline
from mtlgen.inference.generative import (
    GenerativePredictor,
    GeneratorSettings,
    conditioning,
    forecast_label,
    load_generator,
    residual_target,
)
from mtlgen.inference.intervals import VolumeCalibration, VolumeCase, horizon_years
from mtlgen.io.series import load_visit
from mtlgen.train.generative import train_generator
from mtlgen.train.residuals import forecast_specs, generator_specs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_denoiser(seed: int = 0, out_channels: int = 2, cond_channels: int = 14):
    torch.manual_seed(seed)
    return ResidualDenoiser(out_channels, cond_channels, channels=(8, 8), norm_num_groups=8)


def test_lesion_box_is_centred_on_the_lesion_and_stays_inside():
    mask = np.zeros((20, 24, 20), bool)
    mask[2:5, 10:13, 8:11] = True  # centroid (3, 11, 9): the cube is pushed inside at x
    box = lesion_box(mask, 8)
    assert [(s.start, s.stop) for s in box] == [(0, 8), (8, 16), (6, 14)]
    assert mask[box].sum() == mask.sum()
    empty = lesion_box(np.zeros((20, 24, 20), bool), 8)
    assert [s.start for s in empty] == [6, 8, 6]
    with pytest.raises(ValueError, match="at least 32 per side"):
        lesion_box(mask, 32)


def test_ensemble_crps_is_fair_and_a_single_draw_scores_its_error():
    truth = np.zeros(4)
    assert np.allclose(ensemble_crps(np.full((1, 4), 0.3), truth), 0.3)
    rng = np.random.default_rng(0)
    draws = rng.normal(0, 1, (8, 20000))  # N(0, 1) at 0: CRPS = (sqrt(2) - 1) / sqrt(pi)
    assert ensemble_crps(draws, np.zeros(20000)).mean() == pytest.approx(0.2337, abs=0.01)


def test_denoising_loss_ignores_invalid_channels():
    denoiser, scheduler = tiny_denoiser(), training_scheduler(100)
    residual, cond = torch.zeros(2, 2, 8, 8, 8), torch.zeros(2, 14, 8, 8, 8)
    valid = torch.tensor([[True, False], [True, False]])
    garbage = residual.clone()
    garbage[:, 1] = 50.0

    def loss(r):
        return denoising_loss(denoiser, scheduler, r, cond, valid, torch.Generator().manual_seed(3))

    assert loss(residual).item() == pytest.approx(loss(garbage).item())


def test_samplers_and_seeds():
    training = training_scheduler(100)
    assert type(sampling_scheduler(training, "dpm")).__name__ == "DPMSolverMultistepScheduler"
    with pytest.raises(ValueError, match="expected 'ddim' or 'dpm'"):
        sampling_scheduler(training, "euler")
    pipe = ResidualDiffusionPipeline(tiny_denoiser(), training, "ddim", steps=3)
    cond = torch.zeros(14, 8, 8, 8)
    a, b = pipe(cond, 5, seed=1, batch_size=2), pipe(cond, 5, seed=1, batch_size=2)
    assert a.shape == (5, 2, 8, 8, 8) and torch.equal(a, b)
    assert not torch.equal(a, pipe(cond, 5, seed=2, batch_size=2))


def test_trained_sampler_draws_the_conditional_distribution():
    """Residual = the conditioning's sign (+-1) plus noise of spread 0.3: after training, the
    samples' mean follows the sign and their spread is of the right size, with either sampler
    (measured: mean +-1.04, spread 0.31; noise prediction diverged, clean-sample prediction
    collapsed the spread to 0.01)."""
    torch.manual_seed(0)
    denoiser = tiny_denoiser(0, out_channels=1, cond_channels=1)
    scheduler = training_scheduler(100)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        sign = torch.randint(0, 2, (8,), generator=generator).float() * 2 - 1
        cond = sign[:, None, None, None, None].expand(8, 1, 8, 8, 8)
        residual = cond + 0.3 * torch.randn((8, 1, 8, 8, 8), generator=generator)
        loss = denoising_loss(
            denoiser, scheduler, residual, cond, torch.ones(8, 1, dtype=bool), generator
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for sampler in ("ddim", "dpm"):
        pipe = ResidualDiffusionPipeline(denoiser, scheduler, sampler, steps=10)
        for sign in (-1.0, 1.0):
            draws = pipe(torch.full((1, 8, 8, 8), sign), 16, seed=0)
            assert float(draws.mean()) == pytest.approx(sign, abs=0.15)
            assert 0.2 < float(draws.std(dim=0).mean()) < 0.45


def test_conditioning_and_residual_channels(tiny_series):
    visits = [load_visit(v) for v in tiny_series[0].visits[:3]]
    context, target = visits[:2], visits[2]
    forecast = CopyLast().predict(context, target.days)
    forecast = replace(forecast, images={"T1w": forecast.images["T1w"]})  # FLAIR missing
    box, cond = conditioning(context, forecast, target.days, ("T1w", "FLAIR"), 8)
    assert cond.shape == (14, 8, 8, 8)
    assert np.array_equal(cond[0], forecast.images["T1w"][box]) and not cond[1].any()
    assert not cond[3].any()  # the reference's FLAIR is left out with the forecast's
    assert not cond[4:6].any() and not cond[10:12].any()  # a forecast: no next visit
    assert np.all(cond[12] == pytest.approx((target.days - context[-1].days) / 365.25))
    assert not cond[13].any()
    assert np.array_equal(cond[6] + 2 * cond[7], forecast.label[box])
    residual, valid = residual_target(target, forecast, ("T1w", "FLAIR"), box, 0.1)
    assert valid.tolist() == [True, False, True, True] and not residual[1].any()
    expected = (target.images["T1w"][box] - forecast.images["T1w"][box]) / 0.1
    assert np.allclose(residual[0], expected)
    assert set(np.unique(residual[2:])) <= {-1.0, 0.0, 1.0}  # one-hot truth - forecast
    assert np.array_equal(forecast_label(cond, 2), forecast.label[box])
    drawn = labels_from_residuals(forecast_label(cond, 2), residual[None, 2:])
    assert np.array_equal(drawn[0], target.label[box])  # the truth's residual gives the truth
    unlabelled = replace(target, label=None)
    assert residual_target(unlabelled, forecast, ("T1w", "FLAIR"), box, 0.1)[1].tolist() == [
        True,
        False,
        False,
        False,
    ]
    # a reconstruction of visit 1 between visits 0 and 2: the next visit fills its channels
    around = [visits[0], visits[2]]
    gap_fill = CopyLast().predict(around, visits[1].days)
    box, cond = conditioning(around, gap_fill, visits[1].days, ("T1w", "FLAIR"), 8)
    assert np.array_equal(cond[4], visits[2].images["T1w"][box])
    assert np.array_equal(cond[10] + 2 * cond[11], visits[2].label[box])
    assert np.all(cond[13] == pytest.approx((visits[2].days - visits[1].days) / 365.25))


def test_labels_from_residuals_threshold_each_class_and_core_wins():
    forecast = np.array([[[0, 1, 2, 2]]], np.uint8)
    grow = np.zeros((1, 2, 1, 1, 4), np.float32)
    grow[0, 0, ..., 0] = 0.7  # core appears at an empty voxel
    grow[0, 1, ..., 1] = 0.9  # edema drawn where core stays: core wins
    grow[0, 1, ..., 3] = -0.6  # edema removed
    assert labels_from_residuals(forecast, grow)[0].tolist() == [[[1, 1, 2, 0]]]
    with pytest.raises(ValueError, match=r"expected \[n, 2"):
        labels_from_residuals(forecast, grow[:, :1])


def test_a_generator_without_label_channels_no_longer_loads(tmp_path):
    """A checkpoint from before the label channels is refused with the reason, so the
    promotion rule replaces such a champion instead of serving it."""
    from mtlgen.track.versions import checkpoint_problem

    tiny_denoiser(out_channels=2).save_pretrained(tmp_path)
    GeneratorSettings(("T1w", "FLAIR"), 8, 0.1, 100, "ddim", 2, volumes={}).save(tmp_path)
    with pytest.raises(ValueError, match="draws 2 channels: expected 4"):
        load_generator(tmp_path)
    assert "retrain the generator" in checkpoint_problem(tmp_path)


def test_calibrated_volumes_are_the_error_quantiles_in_the_order_of_the_draws():
    """Ensemble copula coupling: the samples' cores take the validation error quantiles
    (evenly spaced levels, so the samples' percentiles are the distribution's), the largest
    drawn core the largest; each core is grown or shrunk along its distance, keeping a ball."""
    errors = {"future:1": np.linspace(-1.0, 1.0, 11).tolist(), "future:2+": [0.0] * 5}
    spread = VolumeSpread.fit(errors, min_days=365.25)
    assert spread.cases == {"all": 16, "future": 16, "future:1": 11, "future:2+": 5}
    assert spread.levels_for("reconstruction:1").tolist() == spread.quantiles["all"]
    years = horizon_years(182.6, spread.min_days)  # horizon counted 1 y
    targets = spread.targets("future:1", 100.0, years, n=5)
    expected = np.expm1(np.log1p(100.0) + np.array([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert np.allclose(targets, expected)
    assert np.percentile(targets, 50) == pytest.approx(100.0)
    stable = spread.targets("future:2+", 100.0, horizon_years(730.5, 365.25), 3)
    assert np.allclose(stable, 100.0)
    few = VolumeSpread.fit({"future:1": [-1.0, -0.8, -0.6]}, 30.0)  # a small cohort
    assert few.cases == {"all": 3} and few.levels_for("future:1")[-1] == -0.6
    with pytest.raises(ValueError, match="no calibration case"):
        VolumeSpread.fit({"future:1": []}, 30.0)
    z, y, x = np.mgrid[:20, :20, :20]
    ball = ((z - 10) ** 2 + (y - 10) ** 2 + (x - 10) ** 2 <= 16).astype(np.uint8)  # core
    ball[((z - 10) ** 2 + (y - 10) ** 2 + (x - 10) ** 2 > 9) & (ball == 1)] = 2  # edema rim
    core = int((ball == 1).sum())
    grown, shrunk = resize_core(ball, core + 40), resize_core(ball, core - 20)
    assert (grown == 1).sum() == core + 40 and (shrunk == 1).sum() == core - 20
    assert ((shrunk == 2) | (shrunk == 1)).sum() == (ball > 0).sum()  # lost core is edema
    assert (grown[ball == 1] == 1).all()  # grown around the old core
    draws = np.stack([resize_core(ball, core + d) for d in (10, -10, 0)])
    coupled = couple(draws, np.array([5.0, 50.0, 20.0]))
    assert (coupled == 1).sum(axis=(1, 2, 3)).tolist() == [50, 5, 20]


def test_generative_predictor_keeps_the_forecast_outside_the_cube(tiny_series):
    visits = [load_visit(v) for v in tiny_series[1].visits[:2]]
    settings = GeneratorSettings(("T1w", "FLAIR"), 8, 0.1, 100, "ddim", 2, spread=1.5)
    base_model = make_baseline("linear", 0.25, 0.25)
    with pytest.raises(ValueError, match=r"expected 4 .*retrain"):
        GenerativePredictor(base_model, tiny_denoiser(), settings)
    for volumes in (None, {"min_days": 30.0}):  # none, or not a fitted spread
        with pytest.raises(ValueError, match="no calibrated volumes"):
            GenerativePredictor(
                base_model, tiny_denoiser(out_channels=4), replace(settings, volumes=volumes)
            )
    volumes = VolumeSpread.fit({"future:1": [-2.0, -1.0, 0.0, 1.0, 2.0]}, 30.0)
    settings = replace(settings, volumes=volumes.to_dict())
    predictor = GenerativePredictor(base_model, tiny_denoiser(out_channels=4), settings, 3, 4)
    pred = predictor.predict(visits[:1], visits[1].days)
    base = base_model.predict(visits[:1], visits[1].days)
    box, _ = conditioning(visits[:1], base, visits[1].days, settings.contrasts, 8)
    outside = np.ones(base.label.shape, bool)
    outside[box] = False
    for c, stack in pred.samples.items():
        assert stack.shape == (3, *base.label.shape)
        assert np.array_equal(pred.images[c], stack.mean(axis=0))
        assert np.array_equal(stack[:, outside], np.repeat(base.images[c][None], 3, 0)[:, outside])
        assert stack[:, ~outside].std(axis=0).mean() > 0
    # each sample's own label: the forecast outside the cube, drawn inside; summed up
    assert np.array_equal(pred.label, base.label) and pred.status == base.status
    assert np.array_equal(pred.lesion_prob[outside], (base.label[outside] > 0).astype(np.float32))
    assert set(np.unique(pred.lesion_prob * 3).round(4)) <= {0.0, 1.0, 2.0, 3.0}
    assert pred.volume_samples_ml.shape == (3,) and sum(pred.status_probs.values()) == 1.0
    assert len(set(pred.volume_samples_ml.round(4))) == 3  # the calibrated spread: all differ
    again = predictor.predict(visits[:1], visits[1].days)
    assert all(np.array_equal(again.samples[c], pred.samples[c]) for c in pred.samples)
    current = predictor.predict(visits[:2], visits[1].days)  # a context visit: no draws
    assert current.samples is None


GENERATIVE = {
    "crop": 8,
    "channels": [8, 8],
    "train_timesteps": 50,
    "steps": 2,
    "n_samples": 2,
    "epochs": 2,
    "steps_per_epoch": 2,
    "batch_size": 2,
    "spread_grid": [0.5, 1.0],
    "spread_cases": 3,
}


def _calibrated_copy_last() -> CopyLast:
    """Copy-last carrying a volume calibration, as a trained base checkpoint does."""
    cases = [VolumeCase("future", k % 2 + 1, 90.0, 2.0, 2.0 + 0.3 * k) for k in range(6)]
    base = CopyLast()
    base.calibration = VolumeCalibration.fit(cases, 0.8, 30.0)
    return base


def test_train_generator_is_deterministic_resumable_and_reloads(tiny_series, tmp_path):
    specs = forecast_specs(tiny_series[0], 3)
    assert specs[:3] == [((0,), 1), ((1,), 2), ((0, 1), 2)]
    gap_fillers = generator_specs(tiny_series[0], 3, True)[len(specs) :]
    assert gap_fillers and all(max(context) > target for context, target in gap_fillers)
    params = Params.model_validate({"seed": 3, "generative": GENERATIVE})
    with pytest.raises(ValueError, match=r"no calibrated future volume errors.*retrain"):
        train_generator(params, CopyLast(), ("T1w",), tiny_series[:2], [], tmp_path / "x")
    assert not (tmp_path / "x").exists()  # refused before any work
    base = _calibrated_copy_last()
    args = (base, ("T1w", "FLAIR"), tiny_series[:2], tiny_series[2:3])
    runs = []
    for name in ("a", "b"):
        result = train_generator(params, *args, tmp_path / name)
        assert result.checkpoint_dir == tmp_path / name / "best" and result.epochs_run == 2
        runs.append(load_generator(result.checkpoint_dir))
        assert result.settings.spread in (0.5, 1.0) and runs[-1][1] == result.settings
        spread = VolumeSpread(**result.settings.volumes)  # the base's calibration cases'
        assert spread.cases == {"all": 6, "future": 6} and len(spread.quantiles["all"]) == 21
        assert spread.quantiles["all"][-1] == max(max(r) for r in base.calibration.rates.values())
        assert (result.settings.n_samples, result.settings.seed) == (2, 3)
    # interrupted after one epoch, then resumed: the same generator as an uninterrupted run
    one = Params.model_validate({"seed": 3, "generative": {**GENERATIVE, "epochs": 1}})
    train_generator(one, *args, tmp_path / "c")
    resumed = train_generator(params, *args, tmp_path / "c")
    assert resumed.epochs_run == 1
    runs.append(load_generator(resumed.checkpoint_dir))
    first = runs[0][0].state_dict()
    for other, _ in runs[1:]:
        for key, value in other.state_dict().items():
            assert torch.equal(first[key], value), key
    history = json.loads((tmp_path / "c" / "history.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    assert {p.name for p in (tmp_path / "a" / "best").iterdir()} >= {
        "model.safetensors",
        "config.json",
        "generative.json",
    }
    assert (tmp_path / "a" / "last" / "train_state.safetensors").is_file()
    other = Params.model_validate({"seed": 4, "generative": GENERATIVE})  # another training
    assert train_generator(other, *args, tmp_path / "c").epochs_run == 2


def test_a_generator_checkpoint_carries_its_base_and_summarises_its_samples(tiny_series, tmp_path):
    """``train.task: generative`` on a multi-task base: the checkpoint holds the base, loads as
    one predictor, and each sample's drawn label is summed up into lesion probability, volumes
    and status probabilities; the pyfunc flavour draws residuals from a conditioning."""
    from mtlgen.data.splits import Split
    from mtlgen.inference.model import load_predictor
    from mtlgen.models.mtl_net import MultiTaskNet
    from mtlgen.track.pyfunc import _load_pyfunc
    from mtlgen.track.stage import train_generator_on_base

    torch.manual_seed(0)
    net = MultiTaskNet(max_context=2, features=[4, 8, 16], time_dim=8, heads=2)
    net.save_pretrained(tmp_path / "mtl")
    patients = [s.patient for s in tiny_series]
    split = Split(0, tuple(patients[:2]), (patients[2],), ())
    params = Params.model_validate(
        {
            "seed": 3,
            "data": {"max_context": 2},
            "generative": {**GENERATIVE, "base": str(tmp_path / "mtl"), "n_samples": 3},
        }
    )
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        bad = params.model_copy(
            update={
                "generative": params.generative.model_copy(update={"base": tmp_path / "missing"})
            }
        )
        train_generator_on_base(bad, tiny_series, split, tmp_path / "x", True, None)
    # a base without calibration errors: calibrated in a copy, which the checkpoint carries
    result = train_generator_on_base(params, tiny_series, split, tmp_path / "gen", True, None)
    assert (result.checkpoint_dir / "base" / "model.safetensors").is_file()
    assert not (tmp_path / "mtl" / "calibration.json").exists()  # the base itself untouched
    carried = json.loads((result.checkpoint_dir / "base" / "calibration.json").read_text())
    assert carried["rates_per_year"]["future:1"] and carried["cases"]["all"] > 1
    predictor = load_predictor(result.checkpoint_dir)
    assert predictor.n_samples == 3 and predictor.segments
    visits = [load_visit(v) for v in tiny_series[0].visits[:2]]
    pred = predictor.predict(visits[:1], visits[1].days)
    point = predictor.point_forecast.predict(visits[:1], visits[1].days)
    assert np.array_equal(pred.label, point.label) and pred.core_volume_ml == point.core_volume_ml
    assert pred.volume_samples_ml.shape == (3,) and (pred.volume_samples_ml >= 0).all()
    assert pred.lesion_prob.shape == pred.label.shape
    assert set(np.unique(pred.lesion_prob * 3).round(4)) <= {0.0, 1.0, 2.0, 3.0}
    assert sum(pred.status_probs.values()) == pytest.approx(1.0)
    draws = _load_pyfunc(str(result.checkpoint_dir)).predict(
        {"cond": np.zeros((14, 8, 8, 8), np.float32)}, {"n_samples": 2, "seed": 1}
    )
    assert draws.shape == (2, 4, 8, 8, 8)  # two image residuals, two label residuals


def test_sample_scores_and_the_reliability_of_growth(tiny_series):
    """The evaluation scores a generator's samples: voxel coverage of the sample interval in
    the near region, whether the sample volume interval holds the truth, the Brier score of
    P(progressive); a deterministic predictor's probability is its status (0 or 1)."""
    from mtlgen.config import EvaluateConfig, ProgressionConfig
    from mtlgen.evaluate.cases import case_truth
    from mtlgen.evaluate.reliability import reliability
    from mtlgen.evaluate.scores import case_metrics, growth_probability

    visits = [load_visit(v) for v in tiny_series[0].visits[:2]]
    truth = case_truth(
        "p", "future", visits[:1], visits[1], EvaluateConfig(near_mm=6.0), ProgressionConfig()
    )
    assert truth.near is not None and truth.volume_ml is not None
    copy = CopyLast().predict(visits[:1], visits[1].days)
    plain = case_metrics(copy, truth)
    assert np.isnan(plain["volume_sample_coverage"]) and np.isnan(
        plain["image_sample_coverage_near"]
    )
    outcome = float(truth.status == "progressive")
    assert plain["growth_brier"] == (float(copy.status == "progressive") - outcome) ** 2
    wide = {c: np.stack([img - 10, img + 10, img]) for c, img in visits[1].images.items()}
    hit = replace(
        copy,
        samples=wide,
        volume_samples_ml=np.array([0.0, truth.volume_ml * 2, truth.volume_ml]),
        status_probs={"progressive": 0.25, "stable": 0.75, "responding": 0.0},
    )
    scored = case_metrics(hit, truth)
    assert scored["image_sample_coverage_near"] == 1.0 and scored["volume_sample_coverage"] == 1.0
    assert scored["growth_brier"] == pytest.approx((0.25 - outcome) ** 2)
    miss = replace(hit, volume_samples_ml=np.full(3, truth.volume_ml + 5))
    assert case_metrics(miss, truth)["volume_sample_coverage"] == 0.0
    rows = [
        {"predictor": "g", "kind": "future", "status_true": s, "growth_prob": p}
        for s, p in [("progressive", 0.9), ("stable", 0.1), ("progressive", 0.7), ("stable", 0.3)]
    ] + [{"predictor": "g", "kind": "current", "status_true": "stable", "growth_prob": 1.0}]
    table = reliability(rows, ["g"])["g"]
    assert table["cases"] == 4 and table["brier"] == pytest.approx((0.01 + 0.01 + 0.09 + 0.09) / 4)
    assert [(b["low"], b["cases"], b["observed"]) for b in table["bins"]] == [
        (0.0, 1, 0.0),
        (0.2, 1, 0.0),
        (0.6, 1, 1.0),
        (0.8, 1, 1.0),
    ]
    assert growth_probability(hit) == 0.25
