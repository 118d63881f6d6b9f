"""Volume calibration on out-of-sample cases: the training patients' cases forecast by a growth
prior fitted without them are what the progression head answers for them."""

from __future__ import annotations

import pytest
import torch

from mtlgen.data.trajectories import volume_trajectories
from mtlgen.evaluate.calibration import cross_fitted_cases
from mtlgen.inference.model import ModelPredictor
from mtlgen.io.series import load_visit
from mtlgen.models.mtl_net import MultiTaskNet
from mtlgen.models.priors import fit_growth_prior


def test_cross_fitted_cases_are_the_heads_forecast_by_a_prior_fitted_without_the_patient(
    tiny_series,
):
    patients = sorted(s.patient for s in tiny_series)
    trajectories = volume_trajectories(tiny_series, 2, reconstruction=True)
    cases = cross_fitted_cases(trajectories, folds=len(patients))  # leave one patient out
    assert len(cases) == len(trajectories)  # every future and gap-filling case, once
    assert {c.kind for c in cases} == {"future", "reconstruction"}
    truth = sorted(trajectories.truth[:, 0].tolist())
    assert sorted(c.true_ml for c in cases) == pytest.approx(truth)

    # the first patient's cases: a multi-task network holding the prior fitted on the others
    others = trajectories.of(patients[1:]).future()
    capacity, weight = fit_growth_prior(
        others.volumes, others.years, others.valid, others.ref, others.truth
    )
    torch.manual_seed(0)
    net = MultiTaskNet(max_context=2, features=[4, 8, 16], time_dim=8, heads=2)
    net.set_growth_prior(capacity, weight)
    predictor = ModelPredictor(net.eval())
    series = next(s for s in tiny_series if s.patient == patients[0])
    visits = [load_visit(v) for v in series.visits]
    first = cases[: len(trajectories.of(patients[:1]))]  # fold 0: the first patient alone
    future = [c for c in first if c.kind == "future"]
    assert [c.context_visits for c in future] == [min(j, 2) for j in range(1, len(visits))]
    for j, case in enumerate(future, start=1):
        context = visits[max(0, j - 2) : j]
        assert case.horizon_days == pytest.approx(visits[j].days - visits[j - 1].days, abs=1e-3)
        with torch.no_grad():
            pred = predictor.predict(context, visits[j].days)
        assert case.predicted_ml == pytest.approx(pred.core_volume_ml, rel=1e-4, abs=1e-6)


def test_evaluation_scores_a_checkpoint_with_its_own_calibration(tiny_series):
    """What ``mtlgen predict`` answers is what is scored: a predictor carrying a calibration
    (a checkpoint's ``calibration.json``, or a generator's base's) keeps it; the others are
    calibrated on the validation patients."""
    from mtlgen.config import ProgressionConfig
    from mtlgen.evaluate.run import _calibrations
    from mtlgen.inference.baselines import CopyLast, make_baseline
    from mtlgen.inference.intervals import VolumeCalibration, VolumeCase
    from mtlgen.inference.model import NamedPredictor

    own = VolumeCalibration.fit([VolumeCase("future", 1, 90.0, 2.0, 3.0)] * 5, 0.8, 180.0)
    carrier = CopyLast()
    carrier.calibration = own
    named = NamedPredictor("mtl", carrier)
    linear = make_baseline("linear", 0.25, 0.25)
    got = _calibrations([named, linear], tiny_series[:2], ProgressionConfig(), 2, True, False)
    assert got["mtl"] is own
    assert got["linear"].cases["all"] > 0 and got["linear"] != own
    assert _calibrations([named, linear], [], ProgressionConfig(), 2, True, False) == {"mtl": own}
