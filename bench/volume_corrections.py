"""Can a correction of linear volume extrapolation, fitted on training patients, beat it on test
patients? A check without any network, on the registered cohort's true label volumes.

For each split seed (``make_split``, as ``bench/mtl_vs_single.py --split-per-seed``), it fits
the progression head's correction (``mtlgen.models.priors.extrapolated_log_volume``: the
log-volume of the least-squares line moved by w1 towards the log-linear fit and w2 towards the
last volume) by grid search of the two core-volume weights on the train + val patients' future
cases (core volume MAE in mL), and prints the test patients' MAE of linear extrapolation and of
the fitted correction. The network learns the same weights by gradient descent.

Example: python bench/volume_corrections.py --seeds 6
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
    args = parser.parse_args()

    import nibabel as nib
    import numpy as np
    import torch

    from mtlgen.config import load_config
    from mtlgen.data.samples import enumerate_samples
    from mtlgen.data.splits import make_split
    from mtlgen.evaluate.metrics import label_volume_ml
    from mtlgen.models.priors import extrapolated_log_volume
    from mtlgen.registry.series import load_series

    params = load_config(args.params)
    data = params.data
    k = data.max_context
    series = load_series(params.registry.url, params.registry.sqlite_timeout_s)
    # per patient, its future cases: (context years before the target, context volumes, truth)
    cases: dict[str, list[tuple[list[float], list[float], float]]] = {}
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
                [(days[i] - days[s.target]) / 365.25 for i in s.context],
                [volumes[i] for i in s.context],
                volumes[s.target],
            )
            for s in enumerate_samples(patient, k, data.reconstruction)
            if s.kind == "future"
        ]

    def batch(chosen):
        """The cases as the network's tensors: volumes [N, K, 1], years, valid, ref, truth."""
        n = len(chosen)
        volumes, years = torch.zeros(n, k, 1), torch.zeros(n, k)
        valid = torch.zeros(n, k, dtype=torch.bool)
        for i, (y, v, _) in enumerate(chosen):
            volumes[i, : len(v), 0], years[i, : len(y)] = torch.tensor(v), torch.tensor(y)
            valid[i, : len(v)] = True
        truth = torch.tensor([c[2] for c in chosen])
        return volumes, years, valid, valid.sum(1) - 1, truth

    def mae(w1: float, w2: float, b) -> float:
        volumes, years, valid, ref, truth = b
        weights = torch.tensor([[w1, w2]])
        predicted = extrapolated_log_volume(volumes, years, valid, ref, weights)[:, 0].expm1()
        return float((predicted - truth).abs().mean())

    grid = [(w1 / 10, w2 / 10) for w1 in range(-5, 9) for w2 in range(-5, 11)]
    rows = []
    print("seed    w1    w2  train+val: linear  fitted  test: linear  fitted")
    for seed in range(args.seeds):
        split = make_split(sorted(cases), data.val_fraction, data.test_fraction, seed)
        fit = batch([c for p in (*split.train, *split.val) for c in cases.get(p, [])])
        test = batch([c for p in split.test for c in cases.get(p, [])])
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
