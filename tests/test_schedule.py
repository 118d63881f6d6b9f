"""Scheduled deployments from params.yaml: specs (pure), Prefect deployment objects, and the
``python -m flows.deployments`` shell."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mtlgen.config import load_config
from mtlgen.orchestration.schedule import ScheduledFlow, deployment_specs

ROOT = Path(__file__).resolve().parents[1]


def test_specs_follow_flows_schedules(tmp_path):
    flows = {"register": ScheduledFlow("R", "registers"), "train": ScheduledFlow("T", "trains")}
    path = tmp_path / "params.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "flows": {
                    "schedules": {"register": "0 2 * * *", "train": "30 4 * * sun"},
                    "timezone": "Europe/Berlin",
                }
            }
        )
    )
    params = load_config(path, ["flows.workers=3"])
    specs = deployment_specs(params, path, flows, ["flows.workers=3"])
    assert [(s.name, s.flow, s.cron, s.timezone, s.description) for s in specs] == [
        ("register", "R", "0 2 * * *", "Europe/Berlin", "registers"),
        ("train", "T", "30 4 * * sun", "Europe/Berlin", "trains"),
    ]
    assert specs[1].parameters == {
        "params_file": str(path.resolve()),
        "overrides": ["flows.workers=3"],
    }
    with pytest.raises(FileNotFoundError, match="settings file not found"):
        deployment_specs(params, tmp_path / "missing.yaml", flows)
    with pytest.raises(ValueError, match=r"flows\.schedules: no flow for train"):
        deployment_specs(params, path, {"register": flows["register"]})


def test_every_deployment_is_a_flow_with_validated_parameters():
    from prefect.flows import Flow

    from flows.deployments import DEPLOYMENTS

    assert set(DEPLOYMENTS) == {"register", "train", "predict", "pipeline"}
    for name, scheduled in DEPLOYMENTS.items():
        assert isinstance(scheduled.flow, Flow), name
        assert scheduled.description, name
        schema = scheduled.flow.parameters.model_dump()["properties"]
        assert {"params_file", "overrides"} <= set(schema), name


def test_runner_deployments_carry_cron_timezone_pool_and_entrypoint(tmp_path, monkeypatch):
    from flows.deployments import DEPLOYMENTS
    from mtlgen.orchestration.deployments import runner_deployments

    monkeypatch.chdir(ROOT)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"flows": {"timezone": "UTC"}}))
    specs = deployment_specs(load_config(path), path, DEPLOYMENTS)
    served = runner_deployments(specs)
    assert [(d.flow_name, d.name) for d in served] == [
        ("register-scan-series", "register"),
        ("longitudinal-pipeline", "pipeline"),
    ]
    assert served[1].schedules[0].schedule.cron == "0 3 * * 0"
    assert served[1].schedules[0].schedule.timezone == "UTC"
    assert served[1].description == DEPLOYMENTS["pipeline"].description
    pooled = runner_deployments(specs, work_pool="site")
    # the entrypoint Prefect derives from the flow object: its file relative to the project folder
    assert [d.entrypoint for d in pooled] == [
        "flows/register.py:register_scan_series",
        "flows/pipeline.py:longitudinal_pipeline",
    ]
    assert pooled[0].work_pool_name == "site"
    assert pooled[0].job_variables == {"working_dir": str(ROOT)}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="not under the working directory"):
        runner_deployments(specs)


def test_deployments_cli_lists_applies_and_serves(tmp_path, monkeypatch):
    import flows.deployments as shell
    import mtlgen.orchestration.deployments as library

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"flows": {"schedules": {"pipeline": "0 3 * * 0"}}}))
    runner = CliRunner()

    args = ["-p", str(path)]
    listed = runner.invoke(shell.app, [*args, "-S", "flows.timezone=Europe/Berlin", "list"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines() == [
        "longitudinal-pipeline/pipeline: cron '0 3 * * 0' (Europe/Berlin): "
        + shell.DEPLOYMENTS["pipeline"].description
    ]

    calls = []
    monkeypatch.setattr(
        library,
        "apply_deployments",
        lambda specs, pool: (
            calls.append(("apply", specs, pool))
            or {f"{s.flow.name}/{s.name}": "id-1" for s in specs}
        ),
    )
    monkeypatch.setattr(
        library,
        "serve_deployments",
        lambda specs, limit=None: calls.append(("serve", specs, limit)),
    )
    applied = runner.invoke(shell.app, [*args, "apply", "--pool", "site"])
    assert applied.exit_code == 0, applied.output
    assert applied.output == (
        "longitudinal-pipeline/pipeline: cron '0 3 * * 0' (UTC) -> pool site [id-1]\n"
    )
    served = runner.invoke(shell.app, [*args, "serve", "--limit", "2"])
    assert served.exit_code == 0, served.output
    assert served.output == "serving pipeline: cron '0 3 * * 0' (UTC)\n"
    assert [(c[0], [s.name for s in c[1]], c[2]) for c in calls] == [
        ("apply", ["pipeline"], "site"),
        ("serve", ["pipeline"], 2),
    ]
    assert calls[0][1][0].parameters == {"params_file": str(path.resolve()), "overrides": []}

    bad = runner.invoke(shell.app, [*args, "-S", "flows.schedules.train=0 2 * *", "list"])
    assert bad.exit_code == 2
    assert "flows.schedules.train" in bad.output and "expected 5 fields" in bad.output
    missing = runner.invoke(shell.app, ["-p", str(tmp_path / "nope.yaml"), "apply"])
    assert missing.exit_code == 2
    assert "settings file not found" in missing.output
    assert len(calls) == 2
