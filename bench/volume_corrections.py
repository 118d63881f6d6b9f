"""Can a correction of linear volume extrapolation, fitted on training patients, beat it on test
patients? A check without any network, on the registered cohort's true label volumes.

For each split seed (``make_split``, as ``bench/mtl_vs_single.py --split-per-seed``), it fits
the correction family the progression head uses (log-volume of the least-squares line moved by
weights w1 towards the log-linear fit and w2 towards the last volume) as *global* weights, by
grid search on the train + val patients' future cases (core volume MAE in mL), and prints the
test patients' MAE of linear extrapolation and of the fitted correction.

Example: python bench/volume_corrections.py --seeds 6
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("-p", "--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seeds", type=int, default=6, help="split seeds 0..N-1")
    args = parser.parse_args()

    import nibabel as nib
    import numpy as np

    from mtlgen.config import load_config
    from mtlgen.data.samples import enumerate_samples
    from mtlgen.data.splits import make_split
    from mtlgen.evaluate.baselines import fit_volume
    from mtlgen.evaluate.metrics import label_volume_ml
    from mtlgen.models.mtl_net import MAX_LOG_VOLUME
    from mtlgen.registry.series import load_series

    params = load_config(args.params)
    data = params.data
    series = load_series(params.registry.url, params.registry.sqlite_timeout_s)
    cases: dict[str, list[tuple[list[float], list[float], float, float]]] = {}
    for patient in series:
        if any(v.label is None for v in patient.visits):
            continue
        volumes = []
        for visit in patient.visits:
            label = nib.load(visit.label)
            volumes.append(label_volume_ml(np.asarray(label.dataobj), label.affine))
        days = [v.days for v in patient.visits]
        cases[patient.patient] = [
            (
                [days[i] for i in s.context],
                [volumes[i] for i in s.context],
                days[s.target],
                volumes[s.target],
            )
            for s in enumerate_samples(patient, data.max_context, data.reconstruction)
            if s.kind == "future"
        ]

    def corrected(w1: float, w2: float, case) -> float:
        days, volumes, target, _ = case
        line = fit_volume(days, volumes, target, "linear")
        if line is None:  # one visit: every extrapolation is the last volume
            return volumes[-1]
        loglin = fit_volume(days, [math.log1p(v) for v in volumes], target, "linear")
        lin, log, last = math.log1p(line), min(loglin, MAX_LOG_VOLUME), math.log1p(volumes[-1])
        return math.expm1(lin + w1 * (log - lin) + w2 * (last - lin))

    def mae(w1: float, w2: float, chosen) -> float:
        return statistics.fmean(abs(corrected(w1, w2, c) - c[3]) for c in chosen)

    grid = [(w1 / 10, w2 / 10) for w1 in range(-5, 9) for w2 in range(-5, 11)]
    rows = []
    print("seed    w1    w2  train+val: linear  fitted  test: linear  fitted")
    for seed in range(args.seeds):
        split = make_split(sorted(cases), data.val_fraction, data.test_fraction, seed)
        fit = [c for p in (*split.train, *split.val) for c in cases.get(p, [])]
        test = [c for p in split.test for c in cases.get(p, [])]
        w1, w2 = min(grid, key=lambda w: mae(*w, fit))
        row = (mae(0, 0, fit), mae(w1, w2, fit), mae(0, 0, test), mae(w1, w2, test))
        rows.append(row)
        print(f"{seed:>4} {w1:>5.1f} {w2:>5.1f}" + _columns(row))
    means = tuple(statistics.fmean(r[i] for r in rows) for i in range(4))
    print(f"{'mean':>16}" + _columns(means))


def _columns(row: tuple[float, ...]) -> str:
    return f" {row[0]:>18.3f} {row[1]:>7.3f} {row[2]:>13.3f} {row[3]:>7.3f}"


if __name__ == "__main__":
    main()
