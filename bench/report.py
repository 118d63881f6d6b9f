"""Benchmark `mtlgen report`: the demo cohort's pages and index, and the cohort index of a
synthetic registry of 1,000 patients (registry rows only, no image files).

1. `mtlgen report --all` on a registered cohort (`--workdir`: a folder with the pipeline's
   data/registry.sqlite and data/processed, default the current one), with the champion's
   checkpoint when `--checkpoint` names one: cold (fresh output folder), then warm (nothing
   changed: every page kept). Baseline in the same run: a bare nibabel load of every processed
   file the pages read.
2. The index of 1,000 patients (4-6 visits, 2 contrasts and a label each): `build_reports` with
   no page to build. Baseline in the same run: the same rows read with
   `mtlgen.registry.queries.list_patients` and written as a plain-text table
   (`mtlgen registry patients`). With chromium present, also the time to load and lay out the
   index page in the headless browser, against the same page of 4 patients.

    .venv/bin/python bench/report.py --checkpoint data/models/mtl/best
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path


def _mtlgen() -> str:
    return str(Path(sys.executable).with_name("mtlgen"))


def bench_demo(workdir: Path, params: Path, checkpoint: Path | None) -> None:
    import nibabel as nib
    import numpy as np
    from sqlalchemy import create_engine, text

    registry = workdir / "data" / "registry.sqlite"
    if not registry.is_file():
        print(f"no registry at {registry}: run the pipeline (make demo / dvc repro) first")
        return
    with create_engine(f"sqlite:///{registry}").connect() as conn:
        files = [row[0] for row in conn.execute(text("SELECT processed_path FROM results"))]
    start = time.perf_counter()
    for f in files:
        np.asarray(nib.load(workdir / f).dataobj)
    load_s = time.perf_counter() - start
    model = ["--checkpoint", str(checkpoint)] if checkpoint else ["--no-model"]
    with tempfile.TemporaryDirectory(prefix="bench-report-") as out:
        times = []
        for _ in ("cold", "warm"):
            start = time.perf_counter()
            done = subprocess.run(
                [_mtlgen(), "-p", str(params), "report", "--all", "--out", out, *model],
                cwd=workdir,
                capture_output=True,
                text=True,
                check=True,
            )
            times.append(time.perf_counter() - start)
            print("  " + done.stdout.strip().splitlines()[-1])
        pages = len(list(Path(out).glob("patients/*/index.html")))
    print(
        f"demo cohort, `mtlgen report --all` ({'checkpoint' if checkpoint else 'no model'}): "
        f"{pages} pages in {times[0]:.1f} s cold (limit 60 s), {times[1]:.1f} s warm; "
        f"baseline: nibabel load of the {len(files)} processed files {load_s:.2f} s "
        f"(cold report {times[0] / load_s:.0f}x, warm {times[1] / load_s:.1f}x)"
    )


def synthetic_registry(url: str, patients: int, seed: int = 0) -> None:
    """A registry of ``patients`` patients with 4-6 visits of T1w + FLAIR + label, rows only."""
    from mtlgen.registry.db import session_scope
    from mtlgen.registry.models import Label, Patient, PatientId, Result, Scan, Visit

    rng = random.Random(seed)
    with session_scope(url) as s:
        for i in range(patients):
            name = f"p{rng.getrandbits(64):016x}"
            baseline = date(2018, 1, 1) + timedelta(days=rng.randrange(1500))
            patient = Patient(
                pseudonym=name,
                baseline_visit="01",
                baseline_date=baseline,
                reference="T1w",
                grid="{}",
            )
            s.add(patient)
            s.add(PatientId(pseudonym=name, source_id=f"src-{i:05d}"))
            days = 0
            for v in range(rng.randint(4, 6)):
                visit = Visit(
                    patient=patient,
                    key=f"{v + 1:02d}",
                    days=days,
                    date=baseline + timedelta(days=days),
                )
                s.add(visit)
                for kind in ("T1w", "FLAIR", "label"):
                    common = dict(
                        version=1,
                        source_path=f"/src/{i}/{v}/{kind}.nii.gz",
                        sha256=f"{rng.getrandbits(128):032x}",
                        shape="[1,1,1]",
                        spacing="[1,1,1]",
                        orientation="RAS",
                    )
                    row = (
                        Label(visit=visit, **common)
                        if kind == "label"
                        else Scan(visit=visit, modality=kind, **common)
                    )
                    s.add(row)
                    result = Result(
                        processed_path=f"data/processed/{name}/{v}/{kind}.nii",
                        to_baseline="[]",
                        reference="T1w",
                        mi=None if v == 0 else 1.1,
                        ncc=None if v == 0 else 0.95,
                    )
                    if kind == "label":
                        result.label = row
                    else:
                        result.scan = row
                    s.add(result)
                days += rng.randint(60, 200)


def bench_index(patients: int) -> None:
    from mtlgen.config import Params
    from mtlgen.registry.queries import format_table, list_patients
    from mtlgen.report.build import build_reports

    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        root = Path(tmp)
        params = Params.model_validate({"registry": {"url": f"sqlite:///{root / 'r.sqlite'}"}})
        start = time.perf_counter()
        synthetic_registry(params.registry.url, patients)
        print(
            f"  synthetic registry of {patients} patients written in "
            f"{time.perf_counter() - start:.1f} s"
        )
        start = time.perf_counter()
        (root / "plain.txt").write_text(format_table(list_patients(params.registry)))
        plain_s = time.perf_counter() - start
        result = build_reports(params, root / "html", patients=[])
        index = result.index
        print(
            f"index of {patients} patients (registry rows only): {result.seconds:.2f} s, "
            f"{index.stat().st_size / 1e6:.2f} MB; baseline: the rows read and written as a "
            f"plain table {plain_s:.2f} s ({result.seconds / plain_s:.1f}x)"
        )
        chromium = shutil.which("chromium")
        if chromium is None:
            print("  (chromium missing: no browser timing)")
            return
        small = Params.model_validate({"registry": {"url": f"sqlite:///{root / 's.sqlite'}"}})
        synthetic_registry(small.registry.url, 4, seed=1)
        small_index = build_reports(small, root / "small", patients=[]).index
        load = {}
        for name, page in (("large", index), ("small", small_index)):
            runs = []
            for _ in range(3):
                start = time.perf_counter()
                dom = subprocess.run(
                    [
                        chromium,
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--dump-dom",
                        page.as_uri(),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                runs.append(time.perf_counter() - start)
            load[name] = min(runs)
            if name == "large":
                shown = dom.count('<a href="patients/')
        print(
            f"  headless chromium load + layout + JS of the {patients}-patient index "
            f"{load['large']:.2f} s (best of 3; {shown} rows on its first page) vs "
            f"{load['small']:.2f} s for 4 patients ({load['large'] / load['small']:.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("."))
    parser.add_argument("--params", type=Path, default=Path("params.yaml").resolve())
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--patients", type=int, default=1000)
    args = parser.parse_args()
    bench_demo(args.workdir.resolve(), args.params.resolve(), args.checkpoint)
    bench_index(args.patients)


if __name__ == "__main__":
    main()
