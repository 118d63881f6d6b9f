"""The evaluation runner and report on a tiny aligned synthetic series (real MNI anatomy)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from mtlgen.config import EvaluateConfig, ProgressionConfig
from mtlgen.data.samples import enumerate_samples
from mtlgen.data.splits import Split
from mtlgen.evaluate.aggregate import primary_scores, seed_groups
from mtlgen.evaluate.report import write_report
from mtlgen.evaluate.run import evaluate_predictors, write_metrics
from mtlgen.evaluate.scores import METRICS
from mtlgen.inference.baselines import make_baseline
from mtlgen.inference.prediction import Prediction
from mtlgen.io.series import load_visit
from mtlgen.progression import progression_status

PROGRESSION = ProgressionConfig()
MAX_CONTEXT = 2


def _core_ml(path) -> float:
    img = nib.load(path)
    return (
        float(np.count_nonzero(np.asarray(img.dataobj) == 1))
        * abs(np.linalg.det(img.affine[:3, :3]))
        / 1000.0
    )


class Oracle:
    """Test predictor that answers with the true target visit (found by its days)."""

    name = "oracle"
    segments = False  # it reads the context labels

    def __init__(self, series):
        self.series = series

    def predict(self, context, target_days):
        for patient in self.series:
            days = [v.days for v in patient.visits]
            if (
                all(
                    any(v.visit == c.visit and v.days == c.days for v in patient.visits)
                    for c in context
                )
                and target_days in days
            ):
                target = load_visit(patient.visits[days.index(target_days)])
                core = _core_ml(patient.visits[days.index(target_days)].label)
                ref = max((c for c in context if c.days <= target_days), key=lambda c: c.days)
                ref_ml = (
                    float((ref.label == 1).sum()) * abs(np.linalg.det(ref.affine[:3, :3])) / 1e3
                )
                status = progression_status(
                    ref_ml, core, PROGRESSION.increase, PROGRESSION.decrease
                )
                return Prediction(target.images, target.label, core, status)
        raise AssertionError("oracle: target not found")


class SampledOracle(Oracle):
    """Samples that are the truth exactly, beside a mean image that is off by 0.1."""

    name = "sampled_oracle"

    def predict(self, context, target_days):
        truth = super().predict(context, target_days)
        samples = {c: np.stack([im, im]) for c, im in truth.images.items()}
        images = {c: im + 0.1 for c, im in truth.images.items()}
        return Prediction(images, truth.label, truth.core_volume_ml, truth.status, samples)


def test_crps_scores_the_samples_and_mae_the_image(aligned_series):
    test = tuple(s.patient for s in aligned_series[3:])
    split = Split(0, (), (), test)
    result = evaluate_predictors(
        aligned_series,
        split,
        [SampledOracle(aligned_series)],
        EvaluateConfig(),
        PROGRESSION,
        MAX_CONTEXT,
        progress=False,
    )
    future = result.metrics["results"]["sampled_oracle"]["future"]
    assert future["image_crps_near"]["mean"] == pytest.approx(0.0, abs=1e-7)
    assert future["image_mae_near"]["mean"] == pytest.approx(0.1, rel=1e-4)


class WrongShape:
    name = "wrong_shape"

    def predict(self, context, target_days):
        last = context[-1]
        return Prediction(last.images, last.label[:-1], 1.0, "stable")


class NaNImage:
    name = "nan_image"

    def predict(self, context, target_days):
        last = context[-1]
        images = {c: np.full_like(img, np.nan) for c, img in last.images.items()}
        return Prediction(images, last.label, 1.0, "stable")


@pytest.fixture(scope="module")
def evaluation(aligned_series, tmp_path_factory):
    test = tuple(s.patient for s in aligned_series[2:])
    split = Split(0, (), tuple(s.patient for s in aligned_series[:2]), test)
    cfg = EvaluateConfig()
    predictors = [make_baseline(b, 0.25, 0.25) for b in cfg.baselines]
    predictors.append(Oracle(aligned_series))
    result = evaluate_predictors(
        aligned_series, split, predictors, cfg, PROGRESSION, MAX_CONTEXT, progress=False
    )
    out = tmp_path_factory.mktemp("evaluation")
    write_metrics(result, out)
    write_report(result.metrics, result.montage, out)
    chosen = [s for s in aligned_series if s.patient in test]
    return result, out, chosen, cfg


def test_metrics_json_has_stable_keys(evaluation):
    _, out, chosen, cfg = evaluation
    on_disk = json.loads((out / "metrics.json").read_text())
    assert set(on_disk) == {
        "meta", "results", "seed_groups", "by_status", "by_context", "calibration", "reliability"
    }  # fmt: skip
    # deterministic predictors say 0 or 1: the oracle's Brier score is 0
    assert on_disk["reliability"]["oracle"]["brier"] == 0.0
    assert on_disk["seed_groups"] == {}  # no predictor named <group>_seed<N>
    assert set(on_disk["results"]) == {"copy_last", "linear", "exponential", "oracle"}
    for block in on_disk["results"].values():  # none of these segments: no "current" cases
        assert set(block) == {"future", "reconstruction"}
        for kind in block.values():
            assert set(kind) == set(METRICS)
            assert all(set(entry) == {"mean", "std", "n"} for entry in kind.values())
    expected = {"future": 0, "reconstruction": 0, "current": 0, "unlabelled": 0}
    for series in chosen:
        for spec in enumerate_samples(series, MAX_CONTEXT):
            expected[spec.kind] += 1
        expected["current"] += sum(v.label is not None for v in series.visits)
        expected["unlabelled"] += sum(v.label is not None for v in series.visits)
    assert on_disk["meta"]["cases"] == expected
    assert on_disk["meta"]["test_patients"] == [s.patient for s in chosen]
    assert primary_scores(on_disk, "copy_last", [m.metric for m in cfg.primary_metrics]) == {
        "future.dice_lesion": on_disk["results"]["copy_last"]["future"]["dice_lesion"]["mean"],
        "future.volume_abs_error_ml": on_disk["results"]["copy_last"]["future"][
            "volume_abs_error_ml"
        ]["mean"],
        "future.image_mae_change": on_disk["results"]["copy_last"]["future"]["image_mae_change"][
            "mean"
        ],
    }


def test_copy_last_numbers_match_an_independent_computation(evaluation):
    result, _, chosen, _ = evaluation
    errors, stable, dices = [], [], []
    for series in chosen:
        for spec in enumerate_samples(series, MAX_CONTEXT):
            if spec.kind != "future":
                continue
            last, target = series.visits[spec.context[-1]], series.visits[spec.target]
            v_last, v_target = _core_ml(last.label), _core_ml(target.label)
            errors.append(abs(v_last - v_target))
            stable.append(progression_status(v_last, v_target, 0.25, 0.25) == "stable")
            a = np.asarray(nib.load(last.label).dataobj) > 0
            b = np.asarray(nib.load(target.label).dataobj) > 0
            dices.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    future = result.metrics["results"]["copy_last"]["future"]
    assert future["volume_abs_error_ml"]["mean"] == pytest.approx(np.mean(errors))
    assert future["volume_abs_error_ml"]["std"] == pytest.approx(np.std(errors))
    assert future["status_accuracy"]["mean"] == pytest.approx(np.mean(stable))
    assert future["dice_lesion"]["mean"] == pytest.approx(np.mean(dices), rel=1e-6)
    assert 0.3 < future["dice_lesion"]["mean"] < 1.0  # lesions change: copy-last is not perfect
    # extrapolation baselines copy the same images and masks: identical image/mask metrics
    for name in ("linear", "exponential"):
        other = result.metrics["results"][name]["future"]
        for metric in ("dice_lesion", "hd95_lesion_mm", "image_mae_brain", "image_mae_change"):
            assert other[metric] == future[metric]
        assert other["image_mae_near"] == future["image_mae_near"]
    # a deterministic image's CRPS is its absolute error
    for region in ("brain", "change", "near"):
        crps, mae = future[f"image_crps_{region}"]["mean"], future[f"image_mae_{region}"]["mean"]
        assert crps == pytest.approx(mae, rel=1e-5)


def test_oracle_is_perfect_and_copy_last_is_not(evaluation):
    result, *_ = evaluation
    for kind in ("future", "reconstruction"):
        oracle = result.metrics["results"]["oracle"][kind]
        copy = result.metrics["results"]["copy_last"][kind]
        assert oracle["dice_lesion"]["mean"] == 1.0
        assert oracle["hd95_lesion_mm"]["mean"] == 0.0
        assert oracle["volume_abs_error_ml"]["mean"] == pytest.approx(0.0, abs=1e-12)
        assert oracle["status_accuracy"]["mean"] == 1.0
        assert oracle["image_mae_change"]["mean"] == 0.0
        assert oracle["image_mae_near"]["mean"] == 0.0
        assert copy["image_mae_near"]["n"] == copy["image_mae_brain"]["n"]  # every case has one
        assert oracle["image_ssim_brain"]["mean"] == pytest.approx(1.0)
        assert oracle["image_psnr_brain"]["mean"] is None  # infinite PSNR is not averaged
        # the changing region is where copy-last is worst
        assert copy["image_mae_change"]["mean"] > 2 * copy["image_mae_brain"]["mean"]


def test_per_case_rows_agree_with_aggregates(evaluation):
    result, out, *_ = evaluation
    rows = (out / "cases.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    records = [dict(zip(header, r.split("\t"), strict=True)) for r in rows[1:]]
    mine = np.array(
        [
            float(r["image_mae_change"] or "nan")
            for r in records
            if r["predictor"] == "copy_last" and r["kind"] == "reconstruction"
        ]
    )
    entry = result.metrics["results"]["copy_last"]["reconstruction"]["image_mae_change"]
    # an empty changing region (a lesion that did not change) has no image error to average
    assert 0 < entry["n"] == np.isfinite(mine).sum()
    assert entry["mean"] == pytest.approx(np.nanmean(mine))


def test_by_status_groups_partition_the_cases_by_true_status(evaluation):
    result, *_ = evaluation
    rows = [r for r in result.rows if r["predictor"] == "copy_last" and r["kind"] == "future"]
    groups = result.metrics["by_status"]["copy_last"]["future"]
    statuses = {r["status_true"] for r in rows}
    assert len(statuses) > 1  # the cohort has lesions that changed and lesions that did not
    assert set(groups) == statuses
    assert sum(g["status_accuracy"]["n"] for g in groups.values()) == len(rows)
    for status, block in groups.items():
        mine = [r for r in rows if r["status_true"] == status]
        assert block["dice_lesion"]["mean"] == pytest.approx(
            np.mean([r["dice_lesion"] for r in mine])
        )
        # copy-last always answers "stable": right on stable cases only
        assert block["status_accuracy"]["mean"] == (1.0 if status == "stable" else 0.0)
    oracle = result.metrics["by_status"]["oracle"]["future"]
    assert all(block["status_accuracy"]["mean"] == 1.0 for block in oracle.values())


def test_by_context_groups_partition_the_cases_by_number_of_context_visits(evaluation):
    result, *_ = evaluation
    rows = [r for r in result.rows if r["predictor"] == "copy_last" and r["kind"] == "future"]
    groups = result.metrics["by_context"]["copy_last"]["future"]
    assert set(groups) == {"1", "2"}  # MAX_CONTEXT visits or fewer
    assert sum(g["dice_lesion"]["n"] for g in groups.values()) == len(rows)
    for n, block in groups.items():
        mine = [r for r in rows if r["context_visits"] == int(n)]
        assert block["dice_lesion"]["mean"] == pytest.approx(
            np.mean([r["dice_lesion"] for r in mine])
        )
    # one visit has no trajectory: linear extrapolation answers its volume, as copy-last does
    linear = result.metrics["by_context"]["linear"]["future"]
    assert linear["1"]["volume_abs_error_ml"] == groups["1"]["volume_abs_error_ml"]
    assert linear["2"]["volume_abs_error_ml"] != groups["2"]["volume_abs_error_ml"]


def test_volume_intervals_are_calibrated_on_the_validation_patients(evaluation, aligned_series):
    result, *_ = evaluation
    assert result.metrics["meta"]["calibration_patients"] == [s.patient for s in aligned_series[:2]]
    # copy-last's calibration by hand: it answers the volume of the latest visit at or before
    scores: dict[str, list[float]] = {}
    for val in aligned_series[:2]:
        for spec in enumerate_samples(val, MAX_CONTEXT):
            target = val.visits[spec.target]
            ref = val.visits[max(i for i in spec.context if i < spec.target)]
            horizon = min(abs(target.days - val.visits[i].days) for i in spec.context)
            error = abs(np.log1p(_core_ml(target.label)) - np.log1p(_core_ml(ref.label)))
            group = f"{spec.kind}:{'1' if len(spec.context) == 1 else '2+'}"
            for key in (group, spec.kind, "all"):
                scores.setdefault(key, []).append(error / (max(horizon, 180.0) / 365.25))
    calibration = result.metrics["calibration"]["copy_last"]
    assert calibration["cases"] == {k: len(v) for k, v in scores.items()}
    for key, values in scores.items():
        rank = int(np.ceil((len(values) + 1) * 0.8 - 1e-9))
        expected = sorted(values)[rank - 1] if rank <= len(values) else None
        assert calibration["radius_per_year"][key] == pytest.approx(expected)
    assert calibration["radius_per_year"]["all"] is not None  # what too-small groups borrow
    # test rows: the interval holds the prediction; coverage is the share holding the truth
    for name in ("copy_last", "linear", "oracle"):
        rows = [r for r in result.rows if r["predictor"] == name and r["kind"] == "future"]
        assert all(r["volume_low_ml"] <= r["volume_pred_ml"] <= r["volume_high_ml"] for r in rows)
        covered = [r["volume_low_ml"] <= r["volume_true_ml"] <= r["volume_high_ml"] for r in rows]
        coverage = result.metrics["results"][name]["future"]["volume_interval_coverage"]
        assert coverage["mean"] == pytest.approx(np.mean(covered)) and coverage["n"] == len(rows)
    oracle = result.metrics["results"]["oracle"]["future"]  # never wrong: a zero-width interval
    assert oracle["volume_interval_width_ml"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert oracle["volume_interval_coverage"]["mean"] == 1.0


def test_report_is_written(evaluation):
    _, out, *_ = evaluation
    summary = (out / "summary.md").read_text()
    assert "| metric | copy_last | linear | exponential | oracle |" in summary
    assert "## Primary metrics: models against baselines" in summary
    assert "## future, by true progression status" in summary
    assert "| stable (" in summary
    assert "## future, by context visits" in summary
    assert "## Volume intervals" in summary and "the 2 validation patients' cases" in summary
    assert "| future:2+ |" in summary and "volume_interval_coverage ≈0.8" in summary
    for png in ("summary.png", "montage.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_bad_input_fails_clearly(aligned_series):
    cfg = EvaluateConfig()
    copy = make_baseline("copy_last", 0.25, 0.25)
    nobody = Split(0, (), (), ("999",))
    with pytest.raises(ValueError, match="test patients"):
        evaluate_predictors(
            aligned_series, nobody, [copy], cfg, PROGRESSION, MAX_CONTEXT, progress=False
        )
    split = Split(0, (), (), (aligned_series[0].patient,))
    with pytest.raises(ValueError, match="unique"):
        evaluate_predictors(
            aligned_series, split, [copy, copy], cfg, PROGRESSION, MAX_CONTEXT, progress=False
        )
    with pytest.raises(ValueError, match=r"wrong_shape.*label shape"):
        evaluate_predictors(
            aligned_series, split, [WrongShape()], cfg, PROGRESSION, MAX_CONTEXT, progress=False
        )
    with pytest.raises(ValueError, match=r"nan_image.*non-finite"):
        evaluate_predictors(
            aligned_series, split, [NaNImage()], cfg, PROGRESSION, MAX_CONTEXT, progress=False
        )


def test_seed_groups_summarise_over_seeds():
    def block(value):
        return {"future": {m: {"mean": value, "std": 0.5, "n": 4} for m in METRICS}}

    results = {
        "mtl_seed0": block(1.0),
        "mtl_seed1": block(3.0),
        "mtl_seed2": block(None),  # a metric undefined for one seed leaves that seed out
        "image_seed0": block(5.0),  # a single seed is no group
        "copy_last": block(9.0),
    }
    groups = seed_groups(results)
    assert set(groups) == {"mtl"}
    assert groups["mtl"]["future"]["dice_lesion"] == {"mean": 2.0, "std": 1.0, "n": 2}


def test_a_model_checkpoint_is_evaluated_under_its_configured_name(aligned_series, tmp_path):
    import torch

    from mtlgen.inference.model import load_predictors
    from mtlgen.models.mtl_net import MultiTaskNet

    torch.manual_seed(0)
    kwargs = {"max_context": MAX_CONTEXT, "features": [4, 8, 16], "time_dim": 8, "heads": 2}
    MultiTaskNet(**kwargs).save_pretrained(tmp_path / "ckpt")
    (model,) = load_predictors({"mtl": tmp_path / "ckpt"}, device="cpu")
    split = Split(0, (), (), (aligned_series[0].patient,))
    result = evaluate_predictors(
        aligned_series, split, [model], EvaluateConfig(), PROGRESSION, MAX_CONTEXT, False, False
    )
    future = result.metrics["results"]["mtl"]["future"]  # untrained: defined, not good
    assert 0.0 <= future["dice_lesion"]["mean"] <= 1.0
    assert future["image_mae_brain"]["n"] == result.metrics["meta"]["cases"]["future"] > 0
    assert future["volume_abs_error_ml"]["mean"] >= 0.0
    current = result.metrics["results"]["mtl"]["current"]  # segmenting unlabelled visits
    assert current["dice_lesion"]["n"] == len(aligned_series[0].visits)
    assert 0.0 <= current["dice_lesion"]["mean"] <= 1.0
    assert current["image_mae_brain"]["n"] == 0  # the image is given, not predicted
    # the same visits in a series with no mask at all: segmented from the images alone
    unlabelled = result.metrics["results"]["mtl"]["unlabelled"]
    assert unlabelled["dice_lesion"]["n"] == len(aligned_series[0].visits)
