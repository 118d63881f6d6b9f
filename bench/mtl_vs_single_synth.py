"""bench/mtl_vs_single.py on a freshly synthesised cohort, without the registry.

For machines without the registration stack (e.g. a GPU box with only torch): synthesises the
cohort WITHOUT head motion (so every visit already lies on its baseline's grid), crops each
patient to ``--box`` voxels around the brain and normalises each image (the test fixture's
stand-in for registration, ``tests/conftest.py::write_aligned_series``), then runs
``run_bench``. The numbers in docs/model.md name the command that produced them.

Example (H200): python bench/mtl_vs_single_synth.py --out /tmp/run --split-per-seed --lanes 3
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=24)
    parser.add_argument("--spacing", type=float, default=3.0, help="mm")
    parser.add_argument("--box", default="56,64,56", help="crop shape in voxels")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lanes", type=int, default=3, help="seeds trained in parallel")
    parser.add_argument("--threads", type=int, default=3, help="torch threads per lane")
    parser.add_argument(
        "--split-per-seed", action="store_true", help="seed s draws its own patient split"
    )
    parser.add_argument("-S", "--set", action="append", default=[], help="params override")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mtl_vs_single_synth"))
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from conftest import write_aligned_series
    from mtl_vs_single import run_bench

    from mtlgen.config import SynthConfig, load_config
    from mtlgen.data.splits import make_split, save_split
    from mtlgen.synth.cohort import write_cohort

    t0 = time.perf_counter()
    cfg = SynthConfig(
        patients=args.patients,
        spacing_mm=args.spacing,
        max_rotation_deg=0,
        max_translation_mm=0,
        workers=min(16, os.cpu_count() or 1),
    )
    write_cohort(cfg, 0, args.out / "bids", progress=False)
    box = tuple(int(x) for x in args.box.split(","))
    series = write_aligned_series(args.out / "bids", args.out / "processed", box=box)
    visits = sum(len(s.visits) for s in series)
    print(
        f"cohort ready in {time.perf_counter() - t0:.0f} s: {len(series)} patients, {visits} visits"
    )
    params = load_config(ROOT / "params.yaml", ["train.progress=false", *args.set])
    ids = [s.patient for s in series]
    splits = [
        make_split(ids, 0.15, 0.2, seed if args.split_per_seed else 0) for seed in range(args.seeds)
    ]
    save_split(splits[0], args.out / "split.json")
    tasks = ("future_seg", "progression", "image")
    run_bench(params, series, splits, tasks, args.out / "bench", args.lanes, args.threads)


if __name__ == "__main__":
    main()
