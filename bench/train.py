"""Benchmark: training throughput and peak memory of the multi-task network.

For each grid (the default model grid of params.yaml's preprocess.shape, and a cubic one,
64^3 by default), times full training steps (forward, task losses, backward, AdamW step) of

- the multi-task model (``task=all``), and
- each single-task model (same backbone, one head), the baseline measured in the same run,

on real longitudinal samples of the registered cohort (``mtlgen register`` first), resized to
the grid. Prints samples/s, ms/step, peak memory and the ratio MTL step / sum of the
single-task steps (what multi-task learning saves per step). Each model runs in its own process
so that its peak memory is its own, ``--rounds`` times in rotating order, and its median run is
reported (a shared machine's speed drifts by tens of percent within minutes; one run each would
put that drift into the ratio). CUDA with bf16 autocast when a GPU is present, else CPU.

Example: python bench/train.py --steps 10 --grids default 64 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

TASKS = ("all", "seg", "future_seg", "progression", "image")


def _peak_mib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(
    params_path: str, overrides: list[str], grid: str, task: str, steps: int, patients: int
) -> dict:
    """Time ``steps`` training steps of one model on one grid (runs in a child process)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import default_collate

    from mtlgen.config import load_config
    from mtlgen.data.dataset import LongitudinalDataset
    from mtlgen.losses.tasks import task_losses
    from mtlgen.models.mtl_net import MultiTaskNet
    from mtlgen.registry.series import load_series
    from mtlgen.train.setup import model_kwargs, resolve_tasks

    params = load_config(params_path, overrides)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    series = load_series(params.registry.url, params.registry.sqlite_timeout_s)
    if not series:
        raise SystemExit(f"no registered series in {params.registry.url}: run mtlgen register")
    series = series[:patients] if patients > 0 else series
    prog = params.progression
    ds = LongitudinalDataset(series, params.data, prog.increase, prog.decrease, 3, True, 0)
    size = tuple(params.preprocess.shape) if grid == "default" else (int(grid),) * 3
    bs = params.train.batch_size

    def resized(batch: dict) -> dict:
        out = dict(batch)
        for key in ("images", "target_image"):
            x = batch[key]
            flat = x.reshape(-1, 1, *x.shape[-3:])
            y = F.interpolate(flat, size=size, mode="trilinear", align_corners=False)
            out[key] = y.reshape(*x.shape[:-3], *size)
        for key in ("masks", "target_mask"):
            x = batch[key]
            y = F.interpolate(x.reshape(-1, 1, *x.shape[-3:]).float(), size=size, mode="nearest")
            out[key] = y.reshape(*x.shape[:-3], *size).long()
        scale = torch.tensor(
            [a / b for a, b in zip(batch["images"].shape[-3:], size, strict=True)]
        ).prod()
        out["voxel_ml"] = batch["voxel_ml"] * scale
        return {k: v.to(device) for k, v in out.items()}

    batches = [
        resized(default_collate([ds[(i * bs + j) % len(ds)] for j in range(bs)]))
        for i in range(steps + 2)
    ]
    tasks = resolve_tasks(task)
    torch.manual_seed(0)
    model = MultiTaskNet(**model_kwargs(params, tasks)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.train.lr)
    use_amp = device == "cuda" and params.train.amp

    def step(batch: dict) -> None:
        with torch.autocast("cuda", torch.bfloat16, enabled=use_amp):
            out = model(batch)
        losses = task_losses(out, batch, tasks)
        optimizer.zero_grad(set_to_none=True)
        (sum(losses.values()) + model.penalty().to(device)).backward()
        optimizer.step()

    for batch in batches[:2]:  # warm-up: allocator, oneDNN/cuDNN kernel choice
        step(batch)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches[2:]:
        step(batch)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {
        "grid": list(size),
        "task": task,
        "device": device,
        "threads": torch.get_num_threads(),
        "batch_size": bs,
        "ms_per_step": 1000 * seconds,
        "samples_per_s": bs / seconds,
        "peak_mib": _peak_mib(device),
    }


def _median_run(runs: list[dict]) -> dict:
    """The run of median step time (its samples/s and ms/step), with the largest peak memory."""
    ordered = sorted(runs, key=lambda r: r["ms_per_step"])
    return {**ordered[len(ordered) // 2], "peak_mib": max(r["peak_mib"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("-p", "--params", default="params.yaml", help="settings file")
    parser.add_argument("-S", "--set", action="append", default=[], help="override a setting")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument(
        "--grids", nargs="+", default=["default", "64"], help="'default' and/or cube edges"
    )
    parser.add_argument(
        "--patients",
        type=int,
        default=0,
        help="use only the first N registered patients (0: all); their scans are all it reads",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure every model this many times, in rotating order, and report the median "
        "(a shared machine's speed drifts by tens of percent within minutes)",
    )
    parser.add_argument("--child", nargs=2, metavar=("GRID", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(
            args.params, args.set, args.child[0], args.child[1], args.steps, args.patients
        )
        print(json.dumps(result))
        return
    overrides = [x for s in args.set for x in ("-S", s)]
    for grid in args.grids:
        runs: dict[str, list[dict]] = {task: [] for task in TASKS}
        for round_ in range(args.rounds):  # each round starts one model later: drift spreads
            for task in TASKS[round_ % len(TASKS) :] + TASKS[: round_ % len(TASKS)]:
                cmd = [sys.executable, __file__, "-p", args.params, *overrides]
                cmd += ["--steps", str(args.steps), "--patients", str(args.patients)]
                cmd += ["--child", grid, task]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"{grid}/{task} failed:\n{done.stderr[-2000:]}")
                runs[task].append(json.loads(done.stdout.strip().splitlines()[-1]))
        rows = {task: _median_run(r) for task, r in runs.items()}
        first = rows["all"]
        print(
            f"\ngrid {first['grid']} | device {first['device']} | threads {first['threads']} "
            f"| batch {first['batch_size']} | {args.steps} timed steps | median of "
            f"{args.rounds} round(s)"
        )
        print(f"{'model':<14}{'samples/s':>11}{'ms/step':>10}{'peak MiB':>10}")
        for task, r in rows.items():
            name = "multi-task" if task == "all" else task
            print(
                f"{name:<14}{r['samples_per_s']:>11.2f}{r['ms_per_step']:>10.0f}"
                f"{r['peak_mib']:>10.0f}"
            )
        singles = sum(rows[t]["ms_per_step"] for t in TASKS[1:])
        print(
            f"MTL step / sum of single-task steps: {first['ms_per_step'] / singles:.2f}x "
            f"({first['ms_per_step']:.0f} ms vs {singles:.0f} ms)"
        )


if __name__ == "__main__":
    main()
