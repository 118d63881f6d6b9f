"""The real DVC pipeline in a temporary copy of the repo: `dvc repro` runs the stages, a change
of one param re-runs only what reads it, and `dvc push`/`dvc pull` round-trip the data through
the default local remote with the workspace emptied in between."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {
    "synth": {"patients": 2, "spacing_mm": 4.0, "workers": 1, "visits_max": 3},
    "preprocess": {"align_levels": [2], "align_iterations": 20},
}


def sh(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise AssertionError(
            f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout + done.stderr


def set_params(repo: Path, changes: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())

    def merge(node: dict, update: dict) -> None:
        for key, value in update.items():
            if isinstance(value, dict):
                merge(node.setdefault(key, {}), value)
            else:
                node[key] = value

    merge(params, changes)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_repo(root: Path) -> Path:
    """A git + DVC repo holding the project's pipeline files, code (stage deps) and DVC config."""
    repo = root / "repo"
    repo.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "mtlgen", repo / "mtlgen", ignore=ignore)
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy2(REPO / name, repo / name)
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")
    shutil.copy2(REPO / ".dvc/config", repo / ".dvc/config")
    shutil.copy2(REPO / ".dvcignore", repo / ".dvcignore")
    set_params(repo, TINY)
    git = ("git", "-c", "user.name=test", "-c", "user.email=test@example.org")
    sh(repo, "git", "add", ".")
    sh(repo, *git, "commit", "-qm", "pipeline")
    return repo


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def changed(repo: Path) -> set[str]:
    """The stages `dvc repro` would run now (`dvc status`)."""
    return set(yaml.safe_load(sh(repo, "dvc", "status", "--json")) or {})


def test_repro_reruns_only_changed_stages_and_push_pull_round_trip(tmp_path) -> None:
    repo = make_repo(tmp_path)
    assert ran(sh(repo, "dvc", "repro")) == {"synth", "register"}
    raw, processed = repo / "data/raw/demo", repo / "data/processed"
    assert len(list(raw.glob("sub-*"))) == 2
    assert len([p for p in processed.iterdir() if p.is_dir()]) == 2  # one folder per pseudonym
    assert changed(repo) == set()

    set_params(repo, {"progression": {"increase": 0.5}})  # read by no stage so far
    assert changed(repo) == set()
    set_params(repo, {"preprocess": {"align_iterations": 21}})
    assert changed(repo) == {"register"}
    set_params(repo, {"synth": {"patients": 3}})
    assert changed(repo) == {"synth", "register"}
    set_params(repo, TINY)
    assert ran(sh(repo, "dvc", "repro")) == set()

    # data under data/ is DVC's, never git's; push, empty the workspace and cache, pull
    untracked = sh(repo, "git", "status", "--porcelain", "--untracked-files=all", "data")
    assert all(line.endswith(".gitignore") for line in untracked.splitlines()), untracked
    before = tree_hashes(repo / "data")
    assert "files pushed" in sh(repo, "dvc", "push")
    shutil.rmtree(raw)
    shutil.rmtree(processed)
    (repo / "data/registry.sqlite").unlink()
    shutil.rmtree(repo / ".dvc/cache")
    assert changed(repo) == {"synth", "register"}
    sh(repo, "dvc", "pull")
    assert tree_hashes(repo / "data") == before
    assert changed(repo) == set()
