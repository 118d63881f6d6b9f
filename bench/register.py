"""Benchmark `mtlgen register`: scans per minute on a synthetic cohort, alignment accuracy
against its ground-truth poses, and peak memory.

Baseline, measured in the same run on the same files: a bare nibabel load + trilinear resample
(nibabel.processing.resample_from_to) of every file onto a model-sized grid, without hashing,
validation, alignment, normalisation, writing or the registry. The ratio says what the whole
registration costs relative to just reading and resampling the data.

Reproducibility: the cohort is registered a second time into a fresh registry (same key,
``SOURCE_DATE_EPOCH`` pinned) and the processed files and registry dumps are compared; a third
run with ITK on every core (``preprocess.align_threads``) prices the single-threaded, bit-
reproducible alignment as a time ratio.

    .venv/bin/python bench/register.py                      # 8 synthetic patients at 2 mm
    .venv/bin/python bench/register.py --cohort data/raw/demo
    .venv/bin/python bench/register.py --dask-workers 2    # + the Prefect flow on Dask workers
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np


def _files(cohort: Path) -> tuple[list[Path], list[Path]]:
    images = sorted(cohort.glob("sub-*/ses-*/anat/*.nii*"))
    labels = sorted(cohort.glob("derivatives/*/sub-*/ses-*/anat/*_dseg.nii*"))
    return images, labels


def _baseline_seconds(
    images: list[Path], labels: list[Path], spacing: float, shape
) -> tuple[float, float]:
    """(wall, CPU) seconds of loading and resampling every file with nibabel alone."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    start, cpu_start = time.perf_counter(), time.process_time()
    for path, order in [(p, 1) for p in images] + [(p, 0) for p in labels]:
        img = nib.load(path)
        centre = img.affine @ np.r_[(np.asarray(img.shape) - 1) / 2, 1]
        affine = np.diag([spacing, spacing, spacing, 1.0])
        affine[:3, 3] = centre[:3] - spacing * (np.asarray(shape) - 1) / 2
        resample_from_to(img, (tuple(shape), affine), order=order).get_fdata()
    return time.perf_counter() - start, time.process_time() - cpu_start


def _run_params(params, root: Path, key: bytes, threads: int):
    """``params`` with a fresh registry, the given pseudonym key and processed folder under
    ``root``, aligning on ``threads`` ITK threads."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "key").write_bytes(key)
    registry = {"url": f"sqlite:///{root / 'registry.sqlite'}", "key_file": root / "key"}
    preprocess = {"out_dir": root / "processed", "align_threads": threads}
    return params.model_copy(
        update={
            "registry": params.registry.model_copy(update=registry),
            "preprocess": params.preprocess.model_copy(update=preprocess),
        }
    )


def _fingerprint(params) -> tuple[dict[str, str], list[str]]:
    """(processed file -> sha256, registry dump with the processed folder masked) of one run."""
    out = Path(params.preprocess.out_dir)
    files = {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*.nii*"))
    }
    with closing(sqlite3.connect(params.registry.url.removeprefix("sqlite:///"))) as db:
        dump = [line.replace(str(out), "OUT") for line in db.iterdump()]
    return files, dump


def _timed_register(cohort: Path, params) -> float:
    from mtlgen.register.run import register_source

    start = time.perf_counter()
    register_source(cohort, params, progress=False)
    return time.perf_counter() - start


def _dask_flow_seconds(cohort: Path, params, out: Path, workers: int) -> float:
    """Wall time of the ``register_scan_series`` flow with a Dask LocalCluster of ``workers``
    processes, into a fresh registry under ``out`` (Prefect's temporary server started first)."""
    import yaml
    from prefect.client.orchestration import get_client

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the flows/ folder
    from flows.register import register_scan_series

    tree = params.model_dump(mode="json")
    tree["registry"] |= {
        "url": f"sqlite:///{out / 'registry.sqlite'}",
        "key_file": str(out / "key"),
    }
    tree["preprocess"]["out_dir"] = str(out / "processed")
    tree["flows"] |= {"task_runner": "dask", "workers": workers, "dask_address": None}
    params_file = out / "params.yaml"
    out.mkdir(parents=True, exist_ok=True)
    params_file.write_text(yaml.safe_dump(tree))
    with get_client(sync_client=True) as client:  # start the temporary server outside the timing
        client.hello()
    start = time.perf_counter()
    state = register_scan_series(str(cohort), str(params_file), return_state=True)
    seconds = time.perf_counter() - start
    print(f"dask flow final state: {state.name} ({state.message or 'all patients registered'})")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", type=Path, help="BIDS cohort to register [synthesise one]")
    parser.add_argument("--patients", type=int, default=8, help="patients to synthesise [8]")
    parser.add_argument("--spacing", type=float, default=2.0, help="synthetic voxel mm [2.0]")
    parser.add_argument("--seed", type=int, default=0, help="synthesis seed [0]")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="settings file")
    parser.add_argument(
        "--dask-workers",
        type=int,
        default=0,
        help="also time the Prefect register flow on a Dask LocalCluster of this many worker "
        "processes, beside the sequential run [0: skip]",
    )
    args = parser.parse_args()

    from mtlgen.config import load_config
    from mtlgen.register.accuracy import alignment_errors
    from mtlgen.register.run import register_source

    params = load_config(args.params)
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1767225600")  # identical row timestamps
    with tempfile.TemporaryDirectory(prefix="mtlgen-bench-register-") as tmp:
        tmp = Path(tmp)
        cohort = args.cohort
        if cohort is None:  # in a child process, so the peak memory below is registration's
            cohort = tmp / "cohort"
            command = [sys.executable, "-m", "mtlgen", "-p", str(args.params), "synth"]
            command += ["--out", str(cohort), "--patients", str(args.patients)]
            command += ["--spacing", str(args.spacing), "--seed", str(args.seed)]
            subprocess.run(command, check=True)
        key = os.urandom(32).hex().encode()
        run_params = _run_params(params, tmp / "first", key, threads=1)
        images, labels = _files(cohort)
        pre = params.preprocess
        baseline, baseline_cpu = _baseline_seconds(images, labels, pre.spacing_mm, pre.shape)

        load = os.getloadavg()[0]
        start, cpu_start = time.perf_counter(), time.process_time()
        result = register_source(cohort, run_params)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        has_truth = (cohort / "derivatives/groundtruth/groundtruth.json").exists()
        errors = alignment_errors(run_params, cohort) if has_truth else []
        again = _run_params(params, tmp / "second", key, threads=1)
        again_seconds = _timed_register(cohort, again)
        threaded = _run_params(params, tmp / "threaded", key, threads=os.cpu_count() or 1)
        threaded_seconds = _timed_register(cohort, threaded)
        (files, dump), (files2, dump2) = _fingerprint(run_params), _fingerprint(again)
        threaded_files, _ = _fingerprint(threaded)
        dask_seconds = None
        if args.dask_workers:
            dask_seconds = _dask_flow_seconds(cohort, params, tmp / "dask", args.dask_workers)

    per_min = 60.0 * len(images) / seconds
    print(f"cohort: {cohort} ({len(images)} images + {len(labels)} labels)")
    print(f"registered {result.registered}, rejected {len(result.rejected)} files")
    print(f"load average at start: {load:.1f} on {os.cpu_count()} cores (other jobs share them)")
    print(f"register: {seconds:.1f} s -> {per_min:.1f} scans/min (images; labels ride along)")
    print(
        f"register CPU time: {cpu:.1f} s -> {60.0 * len(images) / cpu:.1f} scans per CPU-minute "
        "(load-independent; on an idle machine the wall-clock rate is at least this)"
    )
    print(
        f"baseline nibabel load+resample of the same files: {baseline:.1f} s "
        f"(CPU {baseline_cpu:.1f} s)"
    )
    print(
        f"ratio register / baseline: {seconds / baseline:.2f}x wall, {cpu / baseline_cpu:.2f}x CPU"
    )
    print(f"target >= 30 scans/min: {'met' if per_min >= 30 else 'NOT met'}")
    if errors:
        print(
            f"alignment vs ground truth ({len(errors)} follow-ups, model-grid voxels): "
            f"mean of means {np.mean([e.mean_voxels for e in errors]):.3f}, "
            f"worst mean {max(e.mean_voxels for e in errors):.3f}, "
            f"worst max {max(e.max_voxels for e in errors):.3f}, "
            f"worst rotation {max(e.rotation_deg for e in errors):.3f} deg"
        )
    print(f"peak memory (max RSS of the first run): {peak_mib:.0f} MiB")
    same = sum(files[f] == files2.get(f) for f in files)
    print(
        f"second run, fresh registry: {same}/{len(files)} processed files bit-identical, "
        f"registry dump {'identical' if dump == dump2 else 'DIFFERENT'} ({len(dump)} lines)"
    )
    moved = sum(files[f] != threaded_files.get(f) for f in files)
    print(
        f"determinism cost: 1 ITK thread {again_seconds:.1f} s vs {os.cpu_count()} threads "
        f"{threaded_seconds:.1f} s -> {again_seconds / threaded_seconds:.2f}x "
        f"(the threaded run changed {moved}/{len(files)} files)"
    )
    if dask_seconds is not None:
        print(
            f"register flow on Dask ({args.dask_workers} workers): {dask_seconds:.1f} s vs "
            f"sequential {seconds:.1f} s -> speed-up {seconds / dask_seconds:.2f}x"
        )


if __name__ == "__main__":
    main()
