"""The promotion rule with a margin: a paired bootstrap over the same test cases decides, so two
models of equal quality do not replace each other back and forth, a clearly worse candidate is
refused and a clearly better one is promoted; the champion's per-case scores are recorded in
MLflow and read back for the next decision."""

from __future__ import annotations

import numpy as np
import pytest

from mtlgen.config import Params, TrackingConfig
from mtlgen.evaluate.paired import metric_over, paired_bootstrap
from mtlgen.track.promotion import Rule, compare, promote
from mtlgen.track.run import tracked_run
from mtlgen.track.versions import CHAMPION, register_checkpoint
from tests.test_track import make_checkpoint

RULE = Rule(
    {"future.dice_lesion": "max", "future.volume_abs_error_ml": "min"},
    {"future.dice_lesion": 0.02, "future.volume_abs_error_ml": 0.25},
    confidence=0.95,
    resamples=1000,
)
SPLIT = "a" * 64


def cases(dice: np.ndarray, volume: np.ndarray) -> list[dict]:
    """cases.tsv rows of one predictor: future cases (scored) and reconstructions (ignored)."""
    rows = [
        {
            "case": f"c{i}",
            "kind": "future",
            "status_true": "stable",
            "status_pred": "stable",
            "dice_lesion": float(d),
            "volume_abs_error_ml": float(v),
        }
        for i, (d, v) in enumerate(zip(dice, volume, strict=True))
    ]
    return [*rows, {"case": "r0", "kind": "reconstruction", "dice_lesion": 0.0}]


def means(rows: list[dict]) -> dict[str, float]:
    future = [r for r in rows if r["kind"] == "future"]
    return {m: metric_over(future, m.split(".")[1]) for m in RULE.primary}


def model(seed: int, quality: float = 0.0, n: int = 20) -> list[dict]:
    """Per-case scores: the cases' own difficulty (shared by every model) plus this model's
    noise, shifted by ``quality`` (Dice up, volume error down)."""
    difficulty = np.random.default_rng(99).uniform(0.6, 0.9, n)
    noise = np.random.default_rng(seed).normal(0, 0.01, n)
    dice = np.clip(difficulty + noise + quality, 0, 1)
    volume = np.abs(2.0 - 2 * difficulty + 10 * noise - 10 * quality)
    return cases(dice, volume)


def test_paired_bootstrap_interval_brackets_the_difference_and_is_reproducible():
    a, b = model(1, quality=0.05), model(2)
    one = paired_bootstrap(
        {r["case"]: r for r in a}, {r["case"]: r for r in b}, "dice_lesion", "max", 0.95, 1000
    )
    assert one.low < one.improvement < one.high and one.n == 21
    assert 0.03 < one.improvement < 0.07 and one.low > 0
    again = paired_bootstrap(
        {r["case"]: r for r in a}, {r["case"]: r for r in b}, "dice_lesion", "max", 0.95, 1000
    )
    assert again == one
    status = paired_bootstrap(
        {r["case"]: r for r in a}, {r["case"]: r for r in b}, "status_accuracy", "max", 0.9, 200
    )
    assert status.improvement == status.low == status.high == 0.0
    with pytest.raises(ValueError, match="share no scored case"):
        paired_bootstrap({"x": a[0]}, {"y": b[0]}, "dice_lesion", "max", 0.95, 100)


def test_equal_models_do_not_flip_worse_is_refused_better_is_promoted():
    champion, twin = model(1), model(2)
    for cand, champ in ((twin, champion), (champion, twin)):  # both directions: no flip
        rows = compare(means(cand), means(champ), RULE, cand, champ)
        assert all(r.ok for r in rows) and not any(r.better for r in rows)
        assert all(r.low is not None and r.low < 0 < r.high for r in rows)
    worse = model(3, quality=-0.05)
    rows = compare(means(worse), means(champion), RULE, worse, champion)
    assert [r.ok for r in rows] == [False, False]
    better = model(4, quality=0.05)
    rows = compare(means(better), means(champion), RULE, better, champion)
    assert all(r.ok and r.better for r in rows)
    # the case: a volume error of 1.516 vs 1.492 mL (means only) is within the margin
    rows = compare(
        {"future.dice_lesion": 0.82, "future.volume_abs_error_ml": 1.516},
        {"future.dice_lesion": 0.80, "future.volume_abs_error_ml": 1.492},
        RULE,
    )
    assert [(r.ok, r.better, r.low) for r in rows] == [(True, False, None), (True, False, None)]


def test_default_margins_cover_every_primary_metric():
    cfg = Params().evaluate
    assert all(m.margin > 0 for m in cfg.primary_metrics + cfg.generative_metrics)
    assert set(Rule.from_params(Params()).margins) == {m.metric for m in cfg.primary_metrics}
    generator = Rule.from_params(Params(), generator=True)
    assert set(generator.primary) == {"future.image_crps_near", "future.growth_brier"}
    assert all(generator.min_gains[m] > 0 for m in generator.primary)


def test_a_negligible_systematic_gain_is_not_better():
    """A candidate better on every case by 0.002 Dice is better beyond noise, but not by the
    least gain that counts (0.01): it stays non-inferior and is not promoted."""
    champion = model(1)
    nudged = [
        {**r, "dice_lesion": r["dice_lesion"] + 0.002} if r["kind"] == "future" else r
        for r in champion
    ]
    rule = Rule({"future.dice_lesion": "max"}, {"future.dice_lesion": 0.02}, 0.95, 1000)
    (row,) = compare(means(nudged), means(champion), rule, nudged, champion)
    assert row.ok and row.better and row.low > 0
    strict = Rule(rule.primary, rule.margins, 0.95, 1000, {"future.dice_lesion": 0.01})
    (row,) = compare(means(nudged), means(champion), strict, nudged, champion)
    assert row.ok and not row.better


def test_promote_records_cases_and_judges_the_next_candidate_on_them(tmp_path):
    store = TrackingConfig(
        uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_root=tmp_path / "artifacts",
        experiment="test",
        model_name="test-margin",
    )
    versions = []
    for seed in range(4):
        with tracked_run(store, f"train-{seed}") as run:
            run.log_params({"seed": seed})
            ckpt = make_checkpoint(tmp_path / f"ckpt{seed}", seed)
            versions.append(register_checkpoint(ckpt, store.model_name))
    scored = [model(1), model(2), model(3, quality=-0.05), model(4, quality=0.05)]

    def judge(i: int):
        return promote(store, means(scored[i]), RULE, SPLIT, versions[i], cases=scored[i])

    assert judge(0).promoted
    twin = judge(1)
    assert not twin.promoted and "better on no primary metric" in twin.reason
    assert "paired bootstrap" in twin.reason and all(c.cases == 20 for c in twin.comparisons)
    worse = judge(2)
    assert not worse.promoted and "beyond the margin" in worse.reason
    better = judge(3)
    assert better.promoted and better.champion_version == versions[0]
    import mlflow

    champion = mlflow.MlflowClient().get_model_version_by_alias(store.model_name, CHAMPION)
    assert str(champion.version) == versions[3]
    recorded = mlflow.artifacts.load_dict(
        f"runs:/{champion.tags['eval.cases_run']}/eval_cases.json"
    )["cases"]
    assert len(recorded) == 20 and set(recorded[0]) == {
        "case",
        "kind",
        "status_true",
        "status_pred",
        "dice_lesion",
        "volume_abs_error_ml",
    }
