"""DVC with an S3 remote, against a real local S3 endpoint (moto's server on 127.0.0.1):
`dvc push` uploads the tracked data into the bucket, and `dvc pull` restores it after the
workspace and the cache are emptied."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import nibabel
import pytest

from tests.support import free_port, port_open, stop_process_group, wait_until_ready

BIN = Path(sys.executable).parent
BUCKET = "mtlgen-dvc"


@pytest.fixture
def s3_endpoint(tmp_path):
    """moto's S3 server in its own session on 127.0.0.1; stopped by process group."""
    port = free_port()
    log = (tmp_path / "moto.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_ready(proc, lambda: port_open(port), 60, tmp_path / "moto.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)
        log.close()


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.integration
def test_dvc_push_pull_through_s3_remote(tmp_path, s3_endpoint, monkeypatch) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)

    repo = tmp_path / "repo"
    scans = repo / "data/raw/site"
    scans.mkdir(parents=True)
    anatomy = Path(nibabel.__file__).parent / "tests/data"
    for name in ("anatomical.nii", "example4d.nii.gz"):  # real scans shipped with nibabel
        shutil.copy2(anatomy / name, scans / name)

    def dvc(*args: str) -> str:
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        done = subprocess.run(
            ["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"dvc {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc("init", "-q")
    dvc("remote", "add", "-d", "s3", f"s3://{BUCKET}/dvc")
    dvc("remote", "modify", "s3", "endpointurl", s3_endpoint)
    dvc("add", "data/raw/site")
    before = digests(scans)
    assert "3 files pushed" in dvc("push")  # 2 scans + the folder listing
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert len(keys) == 3 and all(k.startswith("dvc/files/md5/") for k in keys)

    shutil.rmtree(scans)
    shutil.rmtree(repo / ".dvc/cache")
    dvc("pull")
    assert digests(scans) == before
