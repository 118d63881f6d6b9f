"""Split-conformal volume intervals: the radius rule, coverage on exchangeable cases, fallbacks,
the horizon scaling and the file beside a checkpoint."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mtlgen.inference.intervals import (
    CALIBRATION_FILE,
    VolumeCalibration,
    VolumeCase,
    conformal_radius,
    group_of,
    horizon_days,
    interval_scores,
    load_calibration,
)


def _cases(rng, n, kind="future", visits=2, spread=0.3, horizon=90.0):
    true = rng.uniform(0.5, 12.0, n)
    predicted = np.maximum(np.expm1(np.log1p(true) + rng.normal(0.0, spread, n)), 0.0)
    return [
        VolumeCase(kind, visits, horizon, float(p), float(t))
        for p, t in zip(predicted, true, strict=True)
    ]


def test_radius_is_the_conformal_order_statistic_or_unbounded():
    assert conformal_radius([0.4, 0.1, 0.3, 0.2], 0.8) == 0.4  # ceil(5 * 0.8) = 4th of 4
    assert conformal_radius([0.5, 0.1, 0.4, 0.3, 0.2, 0.6, 0.7, 0.8, 0.9], 0.8) == 0.8  # 8th
    assert conformal_radius([0.1, 0.2, 0.3], 0.8) is None  # ceil(4 * 0.8) = 4 > 3
    assert conformal_radius([], 0.5) is None


def test_intervals_cover_new_exchangeable_cases_at_the_level():
    rng = np.random.default_rng(0)
    calibration = VolumeCalibration.fit(_cases(rng, 200), 0.8, 180.0)
    covered = []
    for case in _cases(rng, 4000):
        low, high = calibration.interval(case.kind, 2, case.horizon_days, case.predicted_ml)
        assert 0.0 <= low <= case.predicted_ml <= high
        covered.append(low <= case.true_ml <= high)
    # the guarantee is >= 0.8 on average over calibration draws; 4000 cases: std 0.006
    assert 0.77 < np.mean(covered) < 0.87


def test_the_interval_grows_with_the_horizon_beyond_min_days_only():
    calibration = VolumeCalibration(0.8, 180.0, {"future:2+": 0.2, "future": 0.2, "all": 0.2})
    width = {
        h: np.subtract(*calibration.interval("future", 3, h, 4.0)[::-1]) for h in (30, 180, 720)
    }
    assert width[30] == pytest.approx(width[180])  # error that does not shrink with the horizon
    low, high = calibration.interval("future", 3, 720, 4.0)  # 720 days: 4 x the radius
    assert math.log1p(high) - math.log1p(4.0) == pytest.approx(0.2 * 720 / 365.25)
    assert math.log1p(4.0) - math.log1p(low) == pytest.approx(0.2 * 720 / 365.25)
    assert calibration.interval("future", 3, 720, 0.0)[0] == 0.0  # clipped at no lesion


def test_a_group_with_too_few_cases_borrows_its_kinds_radius_then_the_pooled_one():
    rng = np.random.default_rng(1)
    one_visit = _cases(rng, 2, visits=1, spread=2.0)  # too few for a radius of their own
    several = _cases(rng, 30, visits=3, spread=0.1)
    gaps = _cases(rng, 30, kind="reconstruction", visits=2, spread=0.05)
    calibration = VolumeCalibration.fit(one_visit + several + gaps, 0.8, 180.0)
    assert calibration.radius["future:1"] is None and calibration.cases["future:1"] == 2
    assert calibration.radius_for("future", 1) == calibration.radius["future"]
    assert calibration.radius_for("future", 2) == calibration.radius["future:2+"]
    assert calibration.radius_for("current", 1) == calibration.radius["all"]  # kind never seen
    assert calibration.cases == {
        "future:1": 2, "future:2+": 30, "future": 32,
        "reconstruction:2+": 30, "reconstruction": 30, "all": 62,
    }  # fmt: skip
    empty = VolumeCalibration.fit(one_visit, 0.8, 180.0)
    assert empty.interval("future", 1, 90, 3.0) == (0.0, math.inf)


def test_groups_and_horizon():
    assert group_of("future", 1) == "future:1" and group_of("future", 3) == "future:2+"
    assert horizon_days([0, 100, 200], 260) == 60  # the nearest context visit
    assert horizon_days([0, 200], 120) == 80  # a gap: the nearer side


def test_interval_scores_by_hand():
    assert interval_scores(2.0, 4.0, 3.0, 0.8) == {
        "volume_interval_coverage": 1.0,
        "volume_interval_width_ml": 2.0,
        "volume_interval_score": 2.0,
    }
    below = interval_scores(2.0, 4.0, 1.5, 0.8)  # 0.5 below: width + 2 / 0.2 x 0.5
    assert below["volume_interval_coverage"] == 0.0
    assert below["volume_interval_score"] == pytest.approx(7.0)
    assert interval_scores(0.0, math.inf, 3.0, 0.8)["volume_interval_score"] == math.inf


def test_calibration_file_round_trips_and_bad_files_are_named(tmp_path):
    rng = np.random.default_rng(2)
    calibration = VolumeCalibration.fit(_cases(rng, 3, visits=1) + _cases(rng, 12), 0.9, 90.0)
    assert load_calibration(tmp_path) is None  # a checkpoint without one
    path = calibration.save(tmp_path)
    assert path.name == CALIBRATION_FILE
    assert load_calibration(tmp_path) == calibration
    saved = json.loads(path.read_text())
    assert saved["radius_per_year"]["future:1"] is None
    rates = saved["rates_per_year"]  # the signed errors, by group, for the generator's samples
    assert sorted(rates) == ["future:1", "future:2+"] and len(rates["future:2+"]) == 12
    scores = [abs(r) for group in rates.values() for r in group]  # the radii: magnitudes
    assert conformal_radius(scores, 0.9) == pytest.approx(calibration.radius["all"], abs=1e-6)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=CALIBRATION_FILE):
        load_calibration(tmp_path)
    path.write_text(json.dumps({"level": 0.8}))
    with pytest.raises(ValueError, match="not a volume calibration"):
        load_calibration(tmp_path)
    with pytest.raises(ValueError, match="level"):
        VolumeCalibration(1.5, 180.0, {})
