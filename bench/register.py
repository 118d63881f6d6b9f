"""Benchmark `mtlgen register`: scans per minute on a synthetic cohort, alignment accuracy
against its ground-truth poses, and peak memory.

Baseline, measured in the same run on the same files: a bare nibabel load + trilinear resample
(nibabel.processing.resample_from_to) of every file onto a model-sized grid, without hashing,
validation, alignment, normalisation, writing or the registry. The ratio says what the whole
registration costs relative to just reading and resampling the data.

    .venv/bin/python bench/register.py                      # 8 synthetic patients at 2 mm
    .venv/bin/python bench/register.py --cohort data/raw/demo
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _files(cohort: Path) -> tuple[list[Path], list[Path]]:
    images = sorted(cohort.glob("sub-*/ses-*/anat/*.nii*"))
    labels = sorted(cohort.glob("derivatives/*/sub-*/ses-*/anat/*_dseg.nii*"))
    return images, labels


def _baseline_seconds(images: list[Path], labels: list[Path], spacing: float, shape) -> float:
    import nibabel as nib
    from nibabel.processing import resample_from_to

    start = time.perf_counter()
    for path, order in [(p, 1) for p in images] + [(p, 0) for p in labels]:
        img = nib.load(path)
        centre = img.affine @ np.r_[(np.asarray(img.shape) - 1) / 2, 1]
        affine = np.diag([spacing, spacing, spacing, 1.0])
        affine[:3, 3] = centre[:3] - spacing * (np.asarray(shape) - 1) / 2
        resample_from_to(img, (tuple(shape), affine), order=order).get_fdata()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", type=Path, help="BIDS cohort to register [synthesise one]")
    parser.add_argument("--patients", type=int, default=8, help="patients to synthesise [8]")
    parser.add_argument("--spacing", type=float, default=2.0, help="synthetic voxel mm [2.0]")
    parser.add_argument("--seed", type=int, default=0, help="synthesis seed [0]")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="settings file")
    args = parser.parse_args()

    from mtlgen.config import load_config
    from mtlgen.registry.accuracy import alignment_errors
    from mtlgen.registry.register import register_source

    params = load_config(args.params)
    with tempfile.TemporaryDirectory(prefix="mtlgen-bench-register-") as tmp:
        tmp = Path(tmp)
        cohort = args.cohort
        if cohort is None:  # in a child process, so the peak memory below is registration's
            cohort = tmp / "cohort"
            command = [sys.executable, "-m", "mtlgen", "-p", str(args.params), "synth"]
            command += ["--out", str(cohort), "--patients", str(args.patients)]
            command += ["--spacing", str(args.spacing), "--seed", str(args.seed)]
            subprocess.run(command, check=True)
        run_params = params.model_copy(
            update={
                "registry": params.registry.model_copy(
                    update={"url": f"sqlite:///{tmp / 'registry.sqlite'}", "key_file": tmp / "key"}
                ),
                "preprocess": params.preprocess.model_copy(update={"out_dir": tmp / "processed"}),
            }
        )
        images, labels = _files(cohort)
        pre = params.preprocess
        baseline = _baseline_seconds(images, labels, pre.spacing_mm, pre.shape)

        start = time.perf_counter()
        result = register_source(cohort, run_params)
        seconds = time.perf_counter() - start
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        has_truth = (cohort / "derivatives/groundtruth/groundtruth.json").exists()
        errors = alignment_errors(run_params, cohort) if has_truth else []

    per_min = 60.0 * len(images) / seconds
    print(f"cohort: {cohort} ({len(images)} images + {len(labels)} labels)")
    print(f"registered {result.registered}, rejected {len(result.rejected)} files")
    print(f"register: {seconds:.1f} s -> {per_min:.1f} scans/min (images; labels ride along)")
    print(f"baseline nibabel load+resample of the same files: {baseline:.1f} s")
    print(f"ratio register / baseline time: {seconds / baseline:.2f}x")
    print(f"target >= 30 scans/min: {'met' if per_min >= 30 else 'NOT met'}")
    if errors:
        print(
            f"alignment vs ground truth ({len(errors)} follow-ups, model-grid voxels): "
            f"mean of means {np.mean([e.mean_voxels for e in errors]):.3f}, "
            f"worst mean {max(e.mean_voxels for e in errors):.3f}, "
            f"worst max {max(e.max_voxels for e in errors):.3f}, "
            f"worst rotation {max(e.rotation_deg for e in errors):.3f} deg"
        )
    print(f"peak memory (max RSS of this process): {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
