"""Does the progression head's starting point, a Gompertz forecast fitted on the training
patients, beat linear extrapolation on test patients? A check without any network, on the
registered cohort's true label volumes.

For each split seed (``make_split``, as ``bench/mtl_vs_single.py --split-per-seed``), it fits
the carrying capacity and the Gompertz weight (``mtlgen.models.priors.fit_growth_prior``,
the progression head's fixed growth prior) on the training patients' future cases, and prints
the test patients' core-volume MAE (ml) of linear extrapolation, the log-linear (exponential)
fit and the fitted Gompertz forecast (kept within the linear and reference volumes), with the
Gompertz / linear ratio.

With ``--coverage`` it prints instead how often the 80 % volume interval (split conformal,
``mtlgen.inference.intervals``) of that forecast holds the test patients' true volumes when it
is calibrated on the validation patients alone and when the training patients' cases, each
forecast by a prior fitted without that patient (``mtlgen.evaluate.calibration.
cross_fitted_cases``), are added: what a checkpoint's ``calibration.json`` does.

Example: python bench/volume_corrections.py --seeds 6 [--coverage]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("-p", "--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seeds", type=int, default=6, help="split seeds 0..N-1")
    parser.add_argument("--coverage", action="store_true", help="interval coverage instead")
    args = parser.parse_args()
    if args.coverage:
        coverage(args.params, args.seeds)
        return

    import torch

    from mtlgen.config import load_config
    from mtlgen.data.splits import make_split
    from mtlgen.data.trajectories import Trajectories, volume_trajectories
    from mtlgen.models.priors import (
        MAX_LOG_VOLUME,
        extrapolated_log_volume,
        fit_growth_prior,
        gompertz_weights,
        line_at_target,
    )
    from mtlgen.registry.series import load_series

    params = load_config(args.params)
    series = load_series(params.registry.url, params.registry.sqlite_timeout_s)
    cases = volume_trajectories(series, params.data.max_context)

    def core_mae(c: Trajectories, weights: torch.Tensor, capacity: torch.Tensor) -> float:
        log_volume = extrapolated_log_volume(c.volumes, c.years, c.valid, c.ref, weights, capacity)
        return float((log_volume[:, 0].expm1() - c.truth[:, 0]).abs().mean())

    def exponential_mae(c: Trajectories) -> float:
        log_fit = line_at_target(c.volumes[..., :1].log1p(), c.years, c.valid)[:, 0]
        return float((log_fit.clamp(0.0, MAX_LOG_VOLUME).expm1() - c.truth[:, 0]).abs().mean())

    linear = torch.zeros(2, 3)
    rows = []
    print("seed  capacity (ml)  weight   test cases: linear  exponential  Gompertz  / linear")
    for seed in range(args.seeds):
        split = make_split(
            sorted(set(cases.patients)), params.data.val_fraction, params.data.test_fraction, seed
        )
        train, test = cases.of(split.train), cases.of(split.test)
        capacity, weight = fit_growth_prior(
            train.volumes, train.years, train.valid, train.ref, train.truth
        )
        gompertz = gompertz_weights(weight)
        row = (
            core_mae(test, linear, capacity),
            exponential_mae(test),
            core_mae(test, gompertz, capacity),
        )
        rows.append(row)
        print(
            f"{seed:>4} {float(capacity[0]):>14.1f} {float(weight[0]):>7.2f} {len(test):>10}"
            + _columns(row)
        )
    means = tuple(statistics.fmean(r[i] for r in rows) for i in range(3))
    print(f"{'mean':>37}" + _columns(means))


def coverage(params_path: Path, seeds: int) -> None:
    """Test-case coverage of the growth prior's 80 % intervals, calibrated two ways, per seed:
    the conformal interval and the generator's sample interval (its 10th-90th percentiles of
    ``generative.n_samples`` volumes at the calibration errors' quantiles)."""
    from mtlgen.config import load_config
    from mtlgen.data.splits import make_split
    from mtlgen.data.trajectories import volume_trajectories
    from mtlgen.evaluate.calibration import cross_fitted_cases, growth_prior_cases
    from mtlgen.evaluate.scores import sample_interval
    from mtlgen.generative.volumes import VolumeSpread
    from mtlgen.inference.intervals import (
        VolumeCalibration,
        group_of,
        horizon_years,
        interval_scores,
    )
    from mtlgen.models.priors import fit_growth_prior
    from mtlgen.registry.series import load_series

    params = load_config(params_path)
    level, min_days = params.progression.interval_level, params.progression.interval_min_days
    series = load_series(params.registry.url, params.registry.sqlite_timeout_s)
    cases = volume_trajectories(series, params.data.max_context, params.data.reconstruction)
    kinds = ("future", "reconstruction")
    totals: dict[tuple[str, str, str], list[float]] = {}
    print(
        "seed  calibration               cases    conformal: future recon    samples: future recon"
    )
    for seed in range(seeds):
        split = make_split(
            sorted(set(cases.patients)), params.data.val_fraction, params.data.test_fraction, seed
        )
        train = cases.of(split.train)
        fitted = train.future()
        prior = fit_growth_prior(
            fitted.volumes, fitted.years, fitted.valid, fitted.ref, fitted.truth
        )
        val = growth_prior_cases(cases.of(split.val), *prior)
        test = growth_prior_cases(cases.of(split.test), *prior)
        calibrations = {
            "validation": val,
            "+ cross-fitted training": val + cross_fitted_cases(train),
        }
        for name, calib in calibrations.items():
            conformal = VolumeCalibration.fit(calib, level, min_days)
            spread = VolumeSpread.fit(conformal.rates, min_days)
            held: dict[tuple[str, str, str], list[float]] = {}
            for case in test:
                group = group_of(case.kind, case.context_visits)
                years = horizon_years(case.horizon_days, min_days)
                samples = spread.targets(
                    group, case.predicted_ml, years, params.generative.n_samples
                )
                intervals = {
                    "conformal": conformal.interval(
                        case.kind, case.context_visits, case.horizon_days, case.predicted_ml
                    ),
                    "samples": sample_interval(samples, level),
                }
                for method, (low, high) in intervals.items():
                    covered = interval_scores(low, high, case.true_ml, level)
                    key = (name, method, case.kind)
                    held.setdefault(key, []).append(covered["volume_interval_coverage"])
            for key, values in held.items():
                totals.setdefault(key, []).extend(values)
            shares = [
                f"{statistics.fmean(held[(name, m, k)]):>6.2f}" if held.get((name, m, k)) else "-"
                for m in ("conformal", "samples")
                for k in kinds
            ]
            print(f"{seed:>4}  {name:<24} {len(calib):>6}  {' ' * 10}" + " ".join(shares))
    for (name, method, kind), values in sorted(totals.items()):
        print(
            f"all seeds, {name}, {method}, {kind}: {statistics.fmean(values):.3f} of {len(values)}"
        )


def _columns(row: tuple[float, ...]) -> str:
    return f" {row[0]:>9.3f} {row[1]:>12.3f} {row[2]:>9.3f} {row[2] / row[0]:>9.3f}"


if __name__ == "__main__":
    main()
