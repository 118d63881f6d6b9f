"""Scale-out, end to end: a real ``prefect server start`` on 127.0.0.1, a process work pool, a
deployment of ``longitudinal_pipeline`` made by ``python -m flows.deployments apply`` (over
``orchestration.deployments``), a run triggered through the API and executed by a real
``prefect worker``; all it starts is stopped by group.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support import free_port, stop_process_group, wait_until_ready

pytestmark = [pytest.mark.slow, pytest.mark.integration]

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def prefect_server(tmp_path):
    """``prefect server start`` on 127.0.0.1 and a free port, with its own PREFECT_HOME."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    try:
        wait_until_ready(proc, healthy, 180, tmp_path / "server.log")
        yield {**env, "PREFECT_API_URL": url}
    finally:
        stop_process_group(proc)
        log.close()


def test_deployment_runs_on_a_worker(prefect_server, tmp_path, motion_cohort):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.test_flows import pipeline_params

    params_file = pipeline_params(tmp_path, motion_cohort)
    tree = yaml.safe_load(params_file.read_text())
    tree["flows"]["schedules"] = {"pipeline": "0 3 * * 0"}
    params_file.write_text(yaml.safe_dump(tree))

    shell = [sys.executable, "-m", "flows.deployments", "-p", str(params_file)]
    applied = subprocess.run(
        [*shell, "apply", "--pool", "mtlgen-test"],
        cwd=ROOT,
        env=prefect_server,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert applied.returncode == 0, applied.stderr[-3000:]
    assert applied.stdout.startswith(
        "longitudinal-pipeline/pipeline: cron '0 3 * * 0' (UTC) -> pool mtlgen-test ["
    ), applied.stdout

    with temporary_settings(updates={PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("longitudinal-pipeline/pipeline")
            assert deployment.entrypoint == "flows/pipeline.py:longitudinal_pipeline"
            assert deployment.work_pool_name == "mtlgen-test"
            assert deployment.job_variables == {"working_dir": str(ROOT)}
            assert deployment.schedules[0].schedule.cron == "0 3 * * 0"
            assert deployment.parameters["params_file"] == str(params_file.resolve())
        run = run_deployment("longitudinal-pipeline/pipeline", timeout=0)

        worker_log = (tmp_path / "worker.log").open("w")
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "mtlgen-test", "--type", "process"],
            cwd=ROOT,
            env=prefect_server,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 540
            with get_client(sync_client=True) as client:
                while True:
                    state = client.read_flow_run(run.id).state
                    if state.is_final() or time.monotonic() > deadline:
                        break
                    time.sleep(3)
                artifacts = client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])
                    )
                )
        finally:
            stop_process_group(worker)
            worker_log.close()
    assert state.is_completed(), f"{state}\n{(tmp_path / 'worker.log').read_text()[-3000:]}"
    assert "pipeline-summary" in {a.key for a in artifacts}
    assert (tmp_path / "evaluation" / "metrics.json").is_file()
    assert len(list((tmp_path / "predictions").glob("*/*-*-*/prediction.json"))) == 3
