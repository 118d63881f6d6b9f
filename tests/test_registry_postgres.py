"""The registry on a real PostgreSQL server that the test starts on 127.0.0.1 (a free port, its
own session, stopped by process group). Skipped, with the reason shown, where the PostgreSQL
server binaries are missing (Debian: apt-get install postgresql)."""

import csv
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mtlgen.register.run import register_source
from mtlgen.registry.db import session_scope
from mtlgen.registry.models import Patient, Rejection, Result, Scan
from mtlgen.registry.series import load_series
from tests.support import free_port

pytestmark = pytest.mark.integration


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    user = None
    if os.geteuid() == 0:  # initdb refuses to run as root: use the postgres system user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run the server as")
    root = Path(tempfile.mkdtemp(prefix="mtlgen-pg-"))
    if user:
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", free_port()
    as_user = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
    subprocess.run(
        [bindir / "initdb", "-D", data, "-U", "mtlgen", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        **as_user,
    )
    server = subprocess.Popen(
        [bindir / "postgres", "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", root],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        **as_user,
    )
    try:
        for _ in range(100):
            ready = subprocess.run(
                [bindir / "pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True
            )
            if ready.returncode == 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("PostgreSQL did not become ready within 20 s")
        subprocess.run(
            [bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mtlgen", "registry"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg2://mtlgen@127.0.0.1:{port}/registry"
    finally:
        os.killpg(server.pid, signal.SIGINT)  # fast shutdown of the whole process group
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        shutil.rmtree(root, ignore_errors=True)


def _counts(url):
    with session_scope(url) as s:
        return {
            m.__tablename__: s.scalar(select(func.count()).select_from(m))
            for m in (Patient, Scan, Result, Rejection)
        }


def test_register_on_postgres_is_idempotent(
    postgres_url, tmp_path, motion_cohort, register_params, manifest_rows
):
    params = register_params(tmp_path, url=postgres_url)
    manifest = tmp_path / "one.csv"
    rows = manifest_rows(motion_cohort, {"002"})
    rows.append({**rows[0], "patient": "x/y", "image": str(tmp_path / "gone.nii.gz"), "label": ""})
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    first = register_source(manifest, params, progress=False)
    assert first.registered == len(rows) - 1 + len({r["label"] for r in rows[:-1]})
    assert [r.reason.split(", hash")[0] for r in first.rejected] == ["patient id <3 chars"]
    before = _counts(postgres_url)
    again = register_source(manifest, params, progress=False)
    assert (again.registered, again.unchanged) == (0, first.registered)
    assert _counts(postgres_url) == before
    (series,) = load_series(postgres_url)
    assert [v.days for v in series.visits] == sorted(v.days for v in series.visits)
    assert all(Path(p).exists() for v in series.visits for p in v.images.values())


@pytest.mark.slow
def test_concurrent_registrations_on_postgres(
    postgres_url, tmp_path, motion_cohort, register_params, manifest_rows
):
    """Two processes race on patient 003 in PostgreSQL: constraints and retries keep it exact."""
    params = register_params(tmp_path, url=postgres_url)
    settings = tmp_path / "params.yaml"
    settings.write_text(
        f"registry:\n  url: {postgres_url}\n  key_file: {params.registry.key_file}\n"
        f"  allowed_roots: [{params.registry.allowed_roots[0]}]\n"
        f"preprocess:\n  out_dir: {params.preprocess.out_dir}\n"
    )
    manifest = tmp_path / "three.csv"
    rows = manifest_rows(motion_cohort, {"003"})
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    before = _counts(postgres_url)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mtlgen", "-p", str(settings), "register", str(manifest)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    after = _counts(postgres_url)
    files = len(rows) + len({r["label"] for r in rows if r["label"]})
    assert after["scans"] - before["scans"] == len(rows)
    assert after["results"] - before["results"] == files
    assert after["patients"] - before["patients"] == 1
