"""The real DVC pipeline in a temporary copy of the repo: `dvc repro` runs the stages, a change
of one param re-runs only what reads it, and `dvc push`/`dvc pull` round-trip the data through
the default local remote with the workspace emptied in between."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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


DATA = ("synth", "register")  # the default test stops here; the slow one runs every stage


def changed(repo: Path, *stages: str) -> set[str]:
    """Which of ``stages`` (all if none) `dvc repro` would run now (`dvc status`)."""
    return set(yaml.safe_load(sh(repo, "dvc", "status", "--json", *stages)) or {})


def test_repro_reruns_only_changed_stages_and_push_pull_round_trip(tmp_path) -> None:
    repo = make_repo(tmp_path)
    assert ran(sh(repo, "dvc", "repro", "register")) == {"synth", "register"}
    raw, processed = repo / "data/raw/demo", repo / "data/processed"
    assert len(list(raw.glob("sub-*"))) == 2
    assert len([p for p in processed.iterdir() if p.is_dir()]) == 2  # one folder per pseudonym
    assert changed(repo, *DATA) == set()

    set_params(repo, {"progression": {"increase": 0.5}})  # read by neither synth nor register
    assert changed(repo, *DATA) == set()
    set_params(repo, {"preprocess": {"align_iterations": 21}})
    assert changed(repo, *DATA) == {"register"}
    set_params(repo, {"synth": {"patients": 3}})
    assert changed(repo, *DATA) == {"synth", "register"}
    set_params(repo, TINY)
    assert ran(sh(repo, "dvc", "repro", "register")) == set()

    # data under data/ is DVC's, never git's; push, empty the workspace and cache, pull
    untracked = sh(repo, "git", "status", "--porcelain", "--untracked-files=all", "data")
    assert all(line.endswith(".gitignore") for line in untracked.splitlines()), untracked
    before = tree_hashes(repo / "data")
    assert "files pushed" in sh(repo, "dvc", "push")
    shutil.rmtree(raw)
    shutil.rmtree(processed)
    (repo / "data/registry.sqlite").unlink()
    shutil.rmtree(repo / ".dvc/cache")
    assert changed(repo, *DATA) == {"synth", "register"}
    sh(repo, "dvc", "pull", *DATA)
    assert tree_hashes(repo / "data") == before
    assert changed(repo, *DATA) == set()


FULL = {
    "synth": {"patients": 3, "spacing_mm": 4.0, "workers": 1, "visits_max": 3},
    "preprocess": {
        "align_levels": [2],
        "align_iterations": 20,
        "spacing_mm": 4.0,
        "shape": [40, 48, 40],
    },
    "data": {"reconstruction": False},
    "model": {"features": [4, 8, 16]},
    "train": {"epochs": 2, "affinity_batches": 1, "progress": False},
}
STAGES = {
    "synth",
    "register",
    "split",
    "train",
    "train_peer",
    "evaluate",
    "promote",
    "predict",
    "report",
}


@pytest.mark.slow
def test_full_pipeline_tracks_registers_promotes_and_reruns_only_training(
    tmp_path, monkeypatch
) -> None:
    """synth -> register -> split -> train -> evaluate -> promote -> predict -> report, then an
    experiment with another train.epochs re-runs training and what follows, nothing before."""
    import mlflow
    import numpy as np

    from mtlgen.config import TrackingConfig
    from mtlgen.inference.model import load_predictor
    from mtlgen.io.series import load_visit
    from mtlgen.registry.series import load_series
    from mtlgen.track.versions import download_checkpoint

    repo = make_repo(tmp_path)
    set_params(repo, FULL)
    git = ("git", "-c", "user.name=test", "-c", "user.email=test@example.org")
    sh(repo, *git, "commit", "-qam", "tiny")
    assert ran(sh(repo, "dvc", "repro")) == STAGES
    sh(repo, "git", "add", "-A")
    sh(repo, *git, "commit", "-qm", "first model")
    assert "data/evaluation/metrics.json" in sh(repo, "git", "ls-files", "data")
    assert "data/models" not in sh(repo, "git", "ls-files", "data")  # DVC's, not git's

    # MLflow: a finished train run with per-epoch losses/weights and data version; v1 champion
    store = TrackingConfig(uri=f"sqlite:///{repo / 'mlflow.db'}")
    monkeypatch.chdir(repo)  # registry paths are relative to the repo
    mlflow.set_tracking_uri(store.uri)
    client = mlflow.MlflowClient()
    (train_run,) = mlflow.search_runs(
        experiment_names=["mtlgen"],
        filter_string="tags.`mtlgen.stage` = 'train-all'",
        output_format="list",
    )
    assert train_run.info.status == "FINISHED"
    history = client.get_metric_history(train_run.info.run_id, "train_loss_seg")
    assert [m.step for m in history] == [1, 2]
    assert "weight_image" in train_run.data.metrics and "val_loss" in train_run.data.metrics
    assert train_run.data.params["train.epochs"] == "2"
    assert train_run.data.params["data.dvc.data/processed"].endswith(".dir")
    assert len(train_run.data.params["data.split_sha256"]) == 64
    champion = client.get_model_version_by_alias("mtlgen-mtl", "champion")
    assert str(champion.version) == "1"

    # the champion loaded from the registry predicts exactly what the local checkpoint does
    series = load_series(f"sqlite:///{repo / 'data/registry.sqlite'}")
    context = [load_visit(v) for v in series[0].visits]
    folder, version = download_checkpoint(store, tmp_path / "dl", "champion")
    from_registry = load_predictor(folder).predict(context, context[-1].days + 90)
    local = load_predictor(repo / "data/models/mtl/best").predict(context, context[-1].days + 90)
    assert version == "1"
    np.testing.assert_array_equal(from_registry.label, local.label)
    for contrast, image in local.images.items():
        np.testing.assert_array_equal(from_registry.images[contrast], image)
    assert (repo / "data/predictions/pipeline/predictions.tsv").read_text().count("\n") == 4
    # training calibrated the volume intervals on the validation patient; the registered model
    # carries them, evaluation fits the same ones, and every prediction has its interval
    shipped = json.loads((folder / "calibration.json").read_text())
    metrics = json.loads((repo / "data/evaluation/metrics.json").read_text())
    assert shipped == metrics["calibration"]["mtl"] and shipped["radius_per_year"]["all"] >= 0
    # and the image fallback fitted on the same patients: weights of the change in [0, 1]
    fallback = json.loads((folder / "fallback.json").read_text())["weights"]["all"]
    assert set(fallback) == {"near", "far"}
    assert all(0 <= w <= 1 for region in fallback.values() for w in region.values())
    rows = (repo / "data/predictions/pipeline/predictions.tsv").read_text().splitlines()
    table = [dict(zip(rows[0].split("\t"), r.split("\t"), strict=True)) for r in rows[1:]]
    for row in table:
        low, high = float(row["core_volume_low_ml"]), float(row["core_volume_high_ml"])
        assert low <= float(row["core_volume_ml"]) <= high and row["interval_level"] == "0.8"
    # the report stage: a page per patient with the champion's forecast, and the index
    pages = sorted((repo / "data/reports/html/patients").glob("*/index.html"))
    assert len(pages) == len(table) and all("mtlgen-mtl" in p.read_text() for p in pages)
    assert f"{len(table)} patients: " in (repo / "data/reports/html/index.html").read_text()

    # an experiment with another epoch count re-runs both trainings and what follows, nothing
    # before
    out = sh(repo, "dvc", "exp", "run", "-S", "train.epochs=3")
    assert ran(out) == {"train", "train_peer", "evaluate", "promote", "predict", "report"}
    # (the image moves with every learned weight; a tiny model's sized mask may not)
    assert "results.mtl.future.image_mae_brain.mean" in sh(repo, "dvc", "metrics", "diff")
    decision = json.loads((repo / "data/evaluation/promotion.json").read_text())
    assert decision["candidate_version"] == "2"
    rows = decision["comparisons"]
    assert decision["promoted"] == (all(c["ok"] for c in rows) and any(c["better"] for c in rows))
    assert all(c["low"] is not None for c in rows)  # paired on the champion's recorded cases
    now = client.get_model_version_by_alias("mtlgen-mtl", "champion").version
    assert str(now) == ("2" if decision["promoted"] else "1")
    sh(repo, "dvc", "plots", "diff", "HEAD", "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots/index.html").read_text()
    assert "train_losses" in html and "task_weights" in html
