"""Train the diffusion generator on a trained multi-task model's residuals and score its samples
on the test patients' future cases, beside copy-last and the deterministic forecast, in one run.

Per case the evaluation's own scores (``mtlgen.evaluate.scores.case_metrics`` over
``case_truth``'s regions: brain, ``near`` = the reference lesion grown by ``evaluate.near_mm``,
chosen from the inputs, and the changing region): the MAE of copy-last, of the deterministic
forecast and of the sample mean, the CRPS of the samples (fair ensemble estimator), and the
coverage of the voxel-wise 80 % sample interval.
The issue's bars: CRPS near <= 0.8x copy-last's MAE there, changing region <= 0.85x; the sample
mean's MAE at most the deterministic forecast's (near and brain). Prints seconds and peak memory
per prediction for the generator and the deterministic head, and the training time.

    .venv/bin/python bench/generate.py                       # the params' registry, split, model
    .venv/bin/python bench/generate.py -S generative.epochs=2 --out /tmp/gen
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not np.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def _coverage(samples: dict, truth: dict, region: np.ndarray) -> float:
    """The fraction of ``region``'s true voxels inside the samples' voxel-wise 80 % interval,
    averaged over the contrasts both have (as the evaluation averages its image metrics)."""
    values = []
    for c in samples.keys() & truth.keys():
        low, high = np.percentile(samples[c], [10, 90], axis=0)
        values.append(((truth[c] >= low) & (truth[c] <= high))[region].mean())
    return float(np.mean(values)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-p", "--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("-S", "--set", action="append", default=[], help="override key=value")
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="multi-task model [train.out_dir/best]"
    )
    parser.add_argument("--out", type=Path, default=None, help="generator folder [generative]")
    parser.add_argument(
        "--reuse", action="store_true", help="score the generator already in --out, no training"
    )
    args = parser.parse_args()

    import torch

    from mtlgen.config import load_config
    from mtlgen.data.splits import load_split
    from mtlgen.evaluate.cases import case_truth, select_series
    from mtlgen.evaluate.scores import case_metrics
    from mtlgen.inference.baselines import CopyLast
    from mtlgen.inference.generative import GenerativePredictor, load_generator
    from mtlgen.inference.model import load_predictor
    from mtlgen.io.series import load_visit
    from mtlgen.registry.series import load_series
    from mtlgen.train.generative import train_generator
    from mtlgen.train.residuals import forecast_specs

    params = load_config(args.params, args.set)
    series = load_series(params.registry.url, params.registry.sqlite_timeout_s)
    split = load_split(params.data.split_file)
    checkpoint = args.checkpoint or params.train.out_dir / "best"
    out = args.out or params.generative.out_dir
    base = load_predictor(checkpoint)
    contrasts = base.contrasts
    train_seconds = None
    if not args.reuse:
        start = time.perf_counter()
        train_generator(
            params,
            base,
            contrasts,
            select_series(series, split.train, "train"),
            select_series(series, split.val, "validation"),
            out,
            progress=True,
        )
        train_seconds = time.perf_counter() - start
    denoiser, settings = load_generator(out / "best")
    gen = GenerativePredictor(base, denoiser, settings, params.generative.n_samples, params.seed)

    regions = ("brain", "near", "change")
    scores: dict[str, list[float]] = {}
    det_seconds, gen_seconds = [], []
    copy = CopyLast()
    for patient in select_series(series, split.test, "test"):
        visits = [load_visit(v) for v in patient.visits]
        for context_idx, j in forecast_specs(patient, params.data.max_context, False):
            context, target = [visits[i] for i in context_idx], visits[j]
            truth = case_truth(
                patient.patient, "future", context, target, params.evaluate, params.progression
            )
            start = time.perf_counter()
            det = base.predict(context, target.days)
            det_seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            pred = gen.predict(context, target.days)
            gen_seconds.append(time.perf_counter() - start)
            last = copy.predict(context, target.days)
            scored = {
                "copy": case_metrics(last, truth),
                "det": case_metrics(det, truth),
                "gen": case_metrics(pred, truth),
            }
            for name in regions:
                region = getattr(truth, name)
                if region is None or not region.any():
                    continue
                for key, value in (
                    ("copy_mae", scored["copy"][f"image_mae_{name}"]),
                    ("det_mae", scored["det"][f"image_mae_{name}"]),
                    ("mean_mae", scored["gen"][f"image_mae_{name}"]),
                    ("crps", scored["gen"][f"image_crps_{name}"]),
                    ("coverage80", _coverage(pred.samples, target.images, region)),
                ):
                    scores.setdefault(f"{name}.{key}", []).append(float(value))
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    print(f"checkpoint {checkpoint}; generator {out} (spread {settings.spread})")
    if train_seconds is not None:
        print(f"generator training: {train_seconds:.0f} s (bar: 900 s on 2 cores)")
    print(f"future cases scored: {len(gen_seconds)} (test patients, full context)")
    print(
        f"{'region':8s} {'copy MAE':>9s} {'det MAE':>9s} {'mean MAE':>9s} {'CRPS':>9s} "
        f"{'CRPS/copy':>9s} {'mean/det':>9s} {'cov80':>6s}"
    )
    for name in regions:
        m = {
            k: _mean(scores.get(f"{name}.{k}", []))
            for k in ("copy_mae", "det_mae", "mean_mae", "crps", "coverage80")
        }
        print(
            f"{name:8s} {m['copy_mae']:9.4f} {m['det_mae']:9.4f} {m['mean_mae']:9.4f} "
            f"{m['crps']:9.4f} {m['crps'] / m['copy_mae']:9.3f} "
            f"{m['mean_mae'] / m['det_mae']:9.3f} {m['coverage80']:6.2f}"
        )
    print("bars: CRPS/copy near <= 0.80, change <= 0.85; mean/det near and brain <= 1")
    print(
        f"seconds per prediction: generator {np.mean(gen_seconds):.2f} "
        f"({params.generative.n_samples} samples x {settings.steps} {settings.sampler} steps) "
        "vs deterministic "
        f"{np.mean(det_seconds):.2f} -> {np.mean(gen_seconds) / np.mean(det_seconds):.1f}x; "
        f"peak memory {peak_gib:.2f} GiB; torch threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
