"""Benchmark: time and peak memory to synthesise the default demo cohort.

Prints the wall time of `write_cohort` for params.yaml's synth section (24 patients at 2 mm by
default) next to a baseline measured in the same run: writing the same number of images, of the
same grid, with plain nibabel (no rendering), so the ratio is the cost of the simulation itself.
Target (issue 2): under 60 s and under 4 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from mtlgen.config import load_config
from mtlgen.synth.anatomy import load_anatomy
from mtlgen.synth.cohort import write_cohort


def _peak_rss_gb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024**2  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml", help="settings file")
    parser.add_argument(
        "-S", "--set", action="append", default=[], help="override, e.g. synth.patients=8"
    )
    args = parser.parse_args()
    params = load_config(args.params, args.set)
    cfg = params.synth
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = write_cohort(cfg, params.seed, Path(tmp) / "cohort", progress=False)
        elapsed = time.perf_counter() - start

        shape, affine = load_anatomy(cfg.spacing_mm).grid(cfg.spacing_mm)
        data = np.random.default_rng(0).integers(0, 1000, size=shape, dtype=np.int16)
        start = time.perf_counter()
        for i in range(summary.images + summary.visits):  # images + label maps
            nib.save(nib.Nifti1Image(data, affine), Path(tmp) / f"plain_{i}.nii.gz")
        baseline = time.perf_counter() - start

    print(
        f"cohort: {summary.patients} patients, {summary.visits} visits, {summary.images} images, "
        f"{cfg.spacing_mm} mm, grid {shape}, workers {cfg.workers}"
    )
    print(f"synthesis wall time: {elapsed:.1f} s (target < 60 s)")
    print(f"baseline (plain nibabel write of the same files): {baseline:.1f} s")
    print(f"ratio synthesis / plain write: {elapsed / baseline:.2f}x")
    print(
        f"peak memory (process + workers, summed maxima): {_peak_rss_gb():.2f} GB (target < 4 GB)"
    )


if __name__ == "__main__":
    main()
