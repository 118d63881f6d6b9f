"""`mtlgen evaluate`: from a real registry and split file to metrics.json and the report."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from mtlgen.cli import app
from mtlgen.data.splits import make_split, save_split
from mtlgen.register.run import register_source
from mtlgen.registry.series import load_series


def _params_file(tmp_path, root, extra: dict | None = None):
    tree = {
        "registry": {
            "url": f"sqlite:///{root / 'registry.sqlite'}",
            "key_file": str(root / "pseudonym.key"),
        },
        "preprocess": {"out_dir": str(root / "processed")},
        "data": {"split_file": str(root / "split.json"), "max_context": 2},
        "evaluate": {"out_dir": str(root / "evaluation")},
        "tracking": {
            "uri": f"sqlite:///{root / 'mlflow.db'}",
            "artifact_root": str(root / "mlruns"),
        },
    }
    for section, values in (extra or {}).items():
        tree.setdefault(section, {}).update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_missing_checkpoint_fails_naming_the_setting(tmp_path):
    params = _params_file(tmp_path, tmp_path)
    result = CliRunner().invoke(
        app, ["-p", str(params), "evaluate", "--checkpoint", f"mtl={tmp_path / 'nope'}"]
    )
    assert result.exit_code == 2
    assert "evaluate.checkpoints.mtl" in result.output
    bad = CliRunner().invoke(app, ["-p", str(params), "evaluate", "--checkpoint", "mtl"])
    assert bad.exit_code == 2 and "NAME=FOLDER" in bad.output


@pytest.mark.slow
def test_evaluate_command_on_a_registered_cohort(tmp_path, motion_cohort, register_params):
    root = tmp_path / "work"
    register_source(motion_cohort, register_params(root), progress=False)
    patients = [s.patient for s in load_series(f"sqlite:///{root / 'registry.sqlite'}")]
    save_split(make_split(patients, 0.0, 0.34, seed=0), root / "split.json")
    params = _params_file(tmp_path, root)
    result = CliRunner().invoke(app, ["-p", str(params), "evaluate"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((root / "evaluation" / "metrics.json").read_text())
    assert metrics["meta"]["predictors"] == ["copy_last", "linear", "exponential"]
    assert len(metrics["meta"]["test_patients"]) == 1
    future = metrics["results"]["copy_last"]["future"]
    assert future["dice_lesion"]["n"] == metrics["meta"]["cases"]["future"] > 0
    assert 0.0 < future["dice_lesion"]["mean"] <= 1.0
    for name in ("summary.md", "summary.png", "montage.png", "cases.tsv"):
        assert (root / "evaluation" / name).stat().st_size > 0
