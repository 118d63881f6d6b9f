"""What a run was made from: package versions, the git commit and DVC's hashes of its inputs."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import yaml

PACKAGES = (
    "mtlgen",
    "torch",
    "monai",
    "diffusers",
    "numpy",
    "safetensors",
    "nibabel",
    "SimpleITK",
    "mlflow",
    "dvc",
    "prefect",
)


def environment() -> dict[str, str]:
    """Python, platform, accelerator and the versions of the packages a result depends on."""
    import torch

    env = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = "not installed"
    env["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return env


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_state(root: Path | str = ".") -> dict[str, str]:
    """``git.commit`` (HEAD) and ``git.dirty`` of the repository at ``root``, or ``unknown``."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit, "git.dirty": "unknown" if dirty is None else str(bool(dirty))}


def dvc_hashes(paths: list[str], lock: Path | str = "dvc.lock") -> dict[str, str]:
    """DVC's content hash of each path, from the ``outs`` of whichever stage in ``lock`` made it.

    A path that no stage has produced yet maps to ``untracked``.
    """
    lock = Path(lock)
    outs: dict[str, str] = {}
    if lock.exists():
        try:
            stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        except yaml.YAMLError as exc:
            raise ValueError(f"{lock}: not valid YAML ({exc})") from None
        for stage in stages.values():
            for out in stage.get("outs", []):
                outs[out["path"].rstrip("/")] = out.get("md5") or out.get("hash") or "unknown"
    return {path: outs.get(path.rstrip("/"), "untracked") for path in paths}


def data_version(inputs: list[str], root: Path | str = ".") -> dict[str, str]:
    """Git state of ``root`` plus ``dvc.<path>`` = DVC hash of each input path."""
    version = git_state(root)
    for path, digest in dvc_hashes(inputs, Path(root) / "dvc.lock").items():
        version[f"dvc.{path}"] = digest
    return version
