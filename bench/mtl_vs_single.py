"""Multi-task model vs single-task models with the same backbone and budget, on held-out patients.

For each seed: trains the MTL model (``task=all``) and one single-task model per task, times
them, and evaluates every checkpoint with the baselines (copy-last, linear and exponential
volume extrapolation) on the split's test patients (``mtlgen.evaluate.run``). Prints, as
measured in this run:

- MTL vs baselines: future-mask Dice vs copy-last, volume MAE vs the better extrapolation,
  image MAE in the changing region / copy-last's;
- the same image and Dice ratios per seed on the future cases grouped by true progression
  status (on a lesion that did not change, the changing region is its boundary voxels only)
  and by number of context visits (one visit has no trajectory to extrapolate);
- calibrated volume intervals (split conformal on each seed's validation patients): coverage,
  width and interval score of MTL and the baselines, MTL's score / the best baseline's;
- MTL vs each single-task model on that task's own metric (mean +- std over seeds);
- MTL training time / sum of the single-task training times, in total and per epoch (apart from
  how many epochs early stopping let each model run), with the epochs each model ran.

Seeds run as parallel lanes (``--lanes``); within a lane the runs are sequential, so MTL and
its single-task counterparts share the same conditions. With ``--split-per-seed`` seed s also
draws its own patient split (``make_split`` with seed s; the params seed keeps the split
file), so the seeds test on different held-out patients (repeated random sub-sampling); the
baselines are evaluated on every seed's split and compared by their mean over seeds. Writes
``bench.json`` into ``--out``.

Example: python bench/mtl_vs_single.py --seeds 3 --split-per-seed --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# task -> (case kind, metric, direction) judged for the MTL-vs-single comparison
OWN_METRIC = {
    "seg": ("current", "dice_lesion", "max"),
    "future_seg": ("future", "dice_lesion", "max"),
    "progression": ("future", "volume_abs_error_ml", "min"),
    "image": ("future", "image_mae_change", "min"),
}


def _lane(args: tuple) -> dict:
    """Train MTL + single-task models for one seed, then evaluate them and the baselines (named
    ``<baseline>_seed<s>``) on that seed's split."""
    params, series, split, seed, tasks, out, threads = args
    import torch

    from mtlgen.evaluate.run import evaluate_predictors
    from mtlgen.inference.baselines import make_baseline
    from mtlgen.inference.model import NamedPredictor, load_predictor
    from mtlgen.train.loop import train_model

    torch.set_num_threads(threads)
    params = params.model_copy(update={"seed": seed})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs, predictors = {}, []
    for task in ("all", *tasks):
        name = f"{'mtl' if task == 'all' else task}_seed{seed}"
        result = train_model(params, series, split, Path(out) / name, task=task, resume=False)
        runs[name] = {
            "task": task,
            "train_time_s": result.total_train_time_s,
            "affinity_time_s": result.affinity_time_s,
            "epochs": result.epochs_run,
            "best_epoch": result.best_epoch,
        }
        predictors.append(NamedPredictor(name, load_predictor(result.checkpoint_dir, device)))
    prog = params.progression
    baselines = [
        NamedPredictor(f"{b}_seed{seed}", make_baseline(b, prog.increase, prog.decrease))
        for b in params.evaluate.baselines
    ]
    evaluation = evaluate_predictors(
        series,
        split,
        [*baselines, *predictors],
        params.evaluate,
        prog,
        params.data.max_context,
        params.data.reconstruction,
        progress=False,
    )
    return {
        "seed": seed,
        "test": list(split.test),
        "runs": runs,
        "results": evaluation.metrics["results"],
        "by_status": evaluation.metrics["by_status"],
        "by_context": evaluation.metrics["by_context"],
    }


def _group_ratios(lanes: list[dict], key: str, title: str) -> dict:
    """Future cases grouped by ``key`` (``by_status``: true status; ``by_context``: number of
    context visits): per seed, MTL / copy-last of the changing-region image MAE and of the lesion
    Dice; printed, and returned as {group: {metric: [per seed]}}."""
    print(f"future cases by {title} (MTL / copy-last per seed; cases per seed):")
    ratios: dict = {}
    # in the order metrics.json gives them (statuses in STATUSES order, visits ascending)
    order = dict.fromkeys(
        g for lane in lanes for b in lane[key].values() for g in b.get("future", {})
    )
    for group in order:
        for lane in lanes:
            seed, groups = lane["seed"], lane[key]
            mtl = groups.get(f"mtl_seed{seed}", {}).get("future", {}).get(group)
            copy = groups.get(f"copy_last_seed{seed}", {}).get("future", {}).get(group)
            if not (mtl and copy):
                continue
            entry = ratios.setdefault(
                group, {"cases": [], "image_mae_change": [], "dice_lesion": []}
            )
            entry["cases"].append(mtl["dice_lesion"]["n"])
            for metric in ("image_mae_change", "dice_lesion"):
                a, b = mtl[metric]["mean"], copy[metric]["mean"]
                entry[metric].append(a / b if a is not None and b else float("nan"))
        if group in ratios:
            entry = ratios[group]
            print(
                f"  {group:>11}: cases {entry['cases']}, image "
                + " ".join(f"{r:.3f}" for r in entry["image_mae_change"])
                + ", Dice "
                + " ".join(f"{r:.3f}" for r in entry["dice_lesion"])
            )
    return ratios


INTERVAL_METRICS = ("volume_interval_coverage", "volume_interval_width_ml", "volume_interval_score")


def _interval_table(seeds_of, level: float) -> dict:
    """Calibrated volume intervals (``mtlgen.inference.intervals``) of MTL and the baselines on
    future and reconstruction cases, means over seeds, and MTL's interval score / the best
    baseline's; printed, and returned as {kind: {predictor: {metric: mean}, ratio}}."""
    print(f"volume intervals at level {level:g} (mean over seeds): coverage / width ml / score")
    table: dict = {}
    for kind in ("future", "reconstruction"):
        row = {}
        for prefix in ("mtl", "copy_last", "linear", "exponential"):
            values = {m: seeds_of(prefix, kind, m) for m in INTERVAL_METRICS}
            if all(values.values()):
                row[prefix] = {m: statistics.fmean(v) for m, v in values.items()}
        baselines = [p for p in row if p != "mtl"]
        if "mtl" not in row or not baselines:
            continue
        best = min(baselines, key=lambda p: row[p]["volume_interval_score"])
        ratio = row["mtl"]["volume_interval_score"] / row[best]["volume_interval_score"]
        table[kind] = {**row, "ratio_to_best_baseline": ratio}
        cells = "; ".join(
            f"{p} {v['volume_interval_coverage']:.2f} / {v['volume_interval_width_ml']:.2f} / "
            f"{v['volume_interval_score']:.2f}"
            for p, v in row.items()
        )
        print(f"  {kind}: {cells} -> MTL score / {best} {ratio:.3f}")
    return table


def _time_ratios(runs: dict, tasks: tuple[str, ...]) -> dict:
    """MTL training time / the single-task models' sum, in total (what issue 4 bounds) and per
    epoch (the cost of a step, apart from how many epochs early stopping let each model run);
    printed, and returned with the epochs each model ran."""

    def of(task: str) -> list[dict]:
        return [r for r in runs.values() if r["task"] == task]

    def per_epoch(task: str) -> float:
        return sum(r["train_time_s"] for r in of(task)) / sum(r["epochs"] for r in of(task))

    mtl = sum(r["train_time_s"] for r in of("all"))
    single = sum(r["train_time_s"] for t in tasks for r in of(t))
    epoch_mtl, epoch_single = per_epoch("all"), sum(per_epoch(t) for t in tasks)
    epochs = {t: [r["epochs"] for r in of(t)] for t in ("all", *tasks)}
    affinity = sum(r.get("affinity_time_s", 0.0) for r in of("all"))
    print(
        f"training time: MTL {mtl:.1f} s vs sum of single-task {single:.1f} s -> ratio "
        f"{mtl / single:.3f}"
    )
    print(
        f"  per epoch: MTL {epoch_mtl:.1f} s vs {epoch_single:.1f} s -> ratio "
        f"{epoch_mtl / epoch_single:.3f}; epochs run per seed: "
        + ", ".join(f"{'mtl' if t == 'all' else t} {e}" for t, e in epochs.items())
    )
    print(
        f"  of the MTL time, measuring task affinity took {affinity:.1f} s "
        f"({100 * affinity / mtl:.1f}%; train.affinity_batches=0 turns it off): without it "
        f"the ratio would be {(mtl - affinity) / single:.3f}"
    )
    return {
        "mtl_s": mtl,
        "single_s": single,
        "ratio": mtl / single,
        "per_epoch_ratio": epoch_mtl / epoch_single,
        "mtl_affinity_s": affinity,
        "epochs": epochs,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _metric(results: dict, name: str, kind: str, metric: str) -> float | None:
    entry = results.get(name, {}).get(kind, {}).get(metric)
    return None if entry is None else entry["mean"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("-p", "--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "-S", "--set", action="append", default=[], help="override, e.g. train.epochs=20"
    )
    parser.add_argument("--seeds", type=int, default=3, help="training seeds (0..N-1)")
    parser.add_argument("--lanes", type=int, default=1, help="seeds trained in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per lane")
    parser.add_argument(
        "--tasks", default="seg,future_seg,progression,image", help="single-task models to train"
    )
    parser.add_argument(
        "--split-per-seed",
        action="store_true",
        help="seed s draws its own patient split (the params seed keeps data.split_file)",
    )
    parser.add_argument("--out", type=Path, default=Path("data/bench/mtl_vs_single"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from mtlgen.config import load_config
    from mtlgen.data.splits import load_split, make_split, save_split
    from mtlgen.registry.series import load_series

    params = load_config(args.params, [*args.set, "train.progress=false"])
    series = load_series(params.registry.url, params.registry.sqlite_timeout_s)
    patients = [s.patient for s in series]
    data = params.data
    if Path(data.split_file).exists():
        split = load_split(data.split_file)
    else:
        split = make_split(patients, data.val_fraction, data.test_fraction, params.seed)
        save_split(split, args.out / "split.json")
    splits = [
        make_split(patients, data.val_fraction, data.test_fraction, seed)
        if args.split_per_seed and seed != params.seed
        else split
        for seed in range(args.seeds)
    ]
    tasks = tuple(t for t in args.tasks.split(",") if t)
    run_bench(params, series, splits, tasks, args.out, args.lanes, args.threads)


def run_bench(params, series, splits: list, tasks, out: Path, lanes: int, threads: int) -> dict:
    """Train and evaluate every seed's models (seed s on ``splits[s]``); print, write and
    return the comparison."""
    seeds = len(splits)
    for seed, split in enumerate(splits):
        logging.info(
            "seed %d split: %d train, %d val, %d test",
            seed,
            len(split.train),
            len(split.val),
            len(split.test),
        )
    jobs = [(params, series, split, seed, tasks, out, threads) for seed, split in enumerate(splits)]
    t0 = time.perf_counter()
    if lanes > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(lanes, mp_context=ctx) as pool:
            lanes = list(pool.map(_lane, jobs))
    else:
        lanes = [_lane(job) for job in jobs]
    wall = time.perf_counter() - t0
    results = {k: v for lane in lanes for k, v in lane["results"].items()}

    def seeds_of(prefix: str, kind: str, metric: str) -> list[float]:
        values = [_metric(results, f"{prefix}_seed{s}", kind, metric) for s in range(seeds)]
        return [v for v in values if v is not None]

    report: dict = {"seeds": seeds, "wall_time_s": wall, "runs": {}, "checks": {}}
    for lane in lanes:
        report["runs"].update(lane["runs"])
    tested = {seed: lane["test"] for seed, lane in enumerate(lanes)}
    report["test_patients"] = tested
    print(f"\n=== MTL vs single-task, {seeds} seed(s), test patients per seed {tested} ===")
    dice_mtl = _mean_std(seeds_of("mtl", "future", "dice_lesion"))
    vol_mtl = _mean_std(seeds_of("mtl", "future", "volume_abs_error_ml"))
    img_mtl = _mean_std(seeds_of("mtl", "future", "image_mae_change"))
    copy = {
        m: statistics.fmean(seeds_of("copy_last", "future", m))
        for m in ("dice_lesion", "image_mae_change")
    }
    extrap = min(
        statistics.fmean(values)
        for values in (
            seeds_of(b, "future", "volume_abs_error_ml") for b in ("linear", "exponential")
        )
        if values
    )
    checks = report["checks"]
    checks["future_dice"] = {"mtl": dice_mtl, "copy_last": copy["dice_lesion"]}
    checks["volume_mae_ml"] = {"mtl": vol_mtl, "best_extrapolation": extrap}
    checks["image_mae_change"] = {
        "mtl": img_mtl,
        "copy_last": copy["image_mae_change"],
        "ratio": img_mtl[0] / copy["image_mae_change"],
    }
    print(
        f"future Dice (lesion): MTL {dice_mtl[0]:.4f} +- {dice_mtl[1]:.4f} "
        f"vs copy-last {copy['dice_lesion']:.4f}"
    )
    print(
        f"volume MAE (ml):      MTL {vol_mtl[0]:.4f} +- {vol_mtl[1]:.4f} "
        f"vs best extrapolation {extrap:.4f}"
    )
    print(
        f"image MAE change:     MTL {img_mtl[0]:.4f} +- {img_mtl[1]:.4f} vs copy-last "
        f"{copy['image_mae_change']:.4f} -> ratio {checks['image_mae_change']['ratio']:.3f}"
    )
    print("per seed (MTL / baseline): future Dice / copy-last, volume MAE / linear, image / copy")
    for seed in range(seeds):
        ratios = (
            _metric(results, f"mtl_seed{seed}", "future", metric)
            / _metric(results, f"{base}_seed{seed}", "future", metric)
            for base, metric in (
                ("copy_last", "dice_lesion"),
                ("linear", "volume_abs_error_ml"),
                ("copy_last", "image_mae_change"),
            )
        )
        print(f"  seed {seed}: " + "  ".join(f"{r:.3f}" for r in ratios))
    checks["volume_intervals"] = _interval_table(seeds_of, params.progression.interval_level)
    checks["by_status"] = _group_ratios(lanes, "by_status", "true status")
    checks["by_context"] = _group_ratios(lanes, "by_context", "context visits")
    for task in tasks:
        kind, metric, direction = OWN_METRIC[task]
        mtl = _mean_std(seeds_of("mtl", kind, metric))
        single = _mean_std(seeds_of(task, kind, metric))
        tol = max(mtl[1], single[1])
        ok = mtl[0] >= single[0] - tol if direction == "max" else mtl[0] <= single[0] + tol
        checks[f"vs_single_{task}"] = {
            "metric": f"{kind}.{metric}",
            "mtl": mtl,
            "single": single,
            "ok": ok,
        }
        print(
            f"{task:>11} {kind}.{metric}: MTL {mtl[0]:.4f} +- {mtl[1]:.4f} vs single "
            f"{single[0]:.4f} +- {single[1]:.4f} ({'matches/beats' if ok else 'WORSE'})"
        )
    checks["time"] = _time_ratios(report["runs"], tasks)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({**report, "results": results}, indent=1))
    print(f"wrote {out / 'bench.json'} (total wall {wall:.0f} s)")
    return report


if __name__ == "__main__":
    main()
