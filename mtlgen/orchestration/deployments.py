"""The one Prefect-importing module of the library: deployments from ``schedule`` specs.

``serve_deployments`` runs them from this process (small sites, no work pool); ``apply_deployments``
registers them with a Prefect server for a work pool whose workers run them
(``prefect worker start --pool <name>``). The flows come in the specs (from the shell that owns
them). Prefect records each deployment's entrypoint as the flow's file relative to the working
directory, and a pool's workers run from that directory, so call these from the project folder:
every flow file must lie under it.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtlgen.orchestration.schedule import DeploymentSpec


def _check_under_cwd(spec: DeploymentSpec) -> Path:
    """The working directory; the flow's file must lie under it (Prefect stores the path
    relative to it as the entrypoint that workers load)."""
    root = Path.cwd().resolve()
    source = inspect.getsourcefile(getattr(spec.flow, "fn", spec.flow))
    if source is None or not Path(source).resolve().is_relative_to(root):
        raise FileNotFoundError(
            f"deployment {spec.name}: flow file {source} is not under the working directory "
            f"{root}; run from the project folder"
        )
    return root


def runner_deployments(specs: Sequence[DeploymentSpec], work_pool: str | None = None) -> list[Any]:
    """Prefect ``RunnerDeployment`` objects with cron schedules (and a work pool if given, whose
    workers run in the current working directory)."""
    from prefect.schedules import Cron

    deployments = []
    for spec in specs:
        root = _check_under_cwd(spec)
        extra = {}
        if work_pool:
            extra = {"work_pool_name": work_pool, "job_variables": {"working_dir": str(root)}}
        deployments.append(
            spec.flow.to_deployment(
                name=spec.name,
                schedules=[Cron(spec.cron, timezone=spec.timezone)],
                parameters=dict(spec.parameters),
                description=spec.description,
                tags=["mtlgen"],
                **extra,
            )
        )
    return deployments


def apply_deployments(specs: Sequence[DeploymentSpec], work_pool: str) -> dict[str, str]:
    """Register the deployments for ``work_pool`` (created as a process pool if missing) with
    the Prefect API (PREFECT_API_URL); return ``flow/deployment`` -> deployment id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    deployments = runner_deployments(specs, work_pool)  # fails before touching the server
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=work_pool, type="process"))
    ids = {}
    for spec, deployment in zip(specs, deployments, strict=True):
        ids[f"{deployment.flow_name}/{spec.name}"] = str(deployment.apply(work_pool_name=work_pool))
    return ids


def serve_deployments(specs: Sequence[DeploymentSpec], limit: int | None = None) -> None:
    """Serve the deployments from this process until interrupted (Ctrl-C)."""
    from prefect import serve

    serve(*runner_deployments(specs), limit=limit)
