"""Scheduled deployments from params.yaml: specs (pure) and Prefect deployment objects."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtlgen.config import load_config
from mtlgen.orchestration.schedule import ENTRYPOINTS, deployment_specs

ROOT = Path(__file__).resolve().parents[1]


def test_specs_follow_flows_schedules(tmp_path):
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
    specs = deployment_specs(params, path, ["flows.workers=3"])
    assert [(s.name, s.cron, s.timezone) for s in specs] == [
        ("register", "0 2 * * *", "Europe/Berlin"),
        ("train", "30 4 * * sun", "Europe/Berlin"),
    ]
    assert specs[0].entrypoint == "flows/register.py:register_scan_series"
    assert specs[1].parameters == {
        "params_file": str(path.resolve()),
        "overrides": ["flows.workers=3"],
    }
    with pytest.raises(FileNotFoundError, match="settings file not found"):
        deployment_specs(params, tmp_path / "missing.yaml")


def test_every_entrypoint_is_a_flow_with_validated_parameters():
    from prefect.flows import load_flow_from_entrypoint

    for name, entrypoint in ENTRYPOINTS.items():
        flow = load_flow_from_entrypoint(str(ROOT / entrypoint))
        schema = flow.parameters.model_dump()["properties"]
        assert {"params_file", "overrides"} <= set(schema), name


def test_runner_deployments_carry_cron_timezone_and_pool(tmp_path):
    from mtlgen.orchestration.deployments import runner_deployments

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"flows": {"timezone": "UTC"}}))
    specs = deployment_specs(load_config(path), path)
    served = runner_deployments(specs, ROOT)
    assert [(d.flow_name, d.name) for d in served] == [
        ("register-scan-series", "register"),
        ("longitudinal-pipeline", "pipeline"),
    ]
    assert served[1].schedules[0].schedule.cron == "0 3 * * 0"
    assert served[1].schedules[0].schedule.timezone == "UTC"
    assert served[1].entrypoint == "flows/pipeline.py:longitudinal_pipeline"
    pooled = runner_deployments(specs, ROOT, work_pool="site")
    assert pooled[0].work_pool_name == "site"
    assert pooled[0].job_variables == {"working_dir": str(ROOT)}
    with pytest.raises(FileNotFoundError, match=r"no flows/pipeline\.py"):
        runner_deployments(specs, tmp_path)
