"""The one Prefect-importing module of the library: deployments from ``schedule`` specs.

``serve_deployments`` runs them from this process (small sites, no work pool); ``apply_deployments``
registers them with a Prefect server for a work pool whose workers run them
(``prefect worker start --pool <name>``). Both need the project folder (with ``flows/``) as the
working directory, because deployments point at ``flows/<file>.py`` entrypoints.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtlgen.orchestration.schedule import DeploymentSpec


def _project(project: Path | str) -> Path:
    root = Path(project).resolve()
    if not (root / "flows" / "pipeline.py").is_file():
        raise FileNotFoundError(f"{root}: no flows/pipeline.py here; run from the project folder")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # the flow files import flows.* and mtlgen
    return root


def runner_deployments(
    specs: Sequence[DeploymentSpec], project: Path | str = ".", work_pool: str | None = None
) -> list[Any]:
    """Prefect ``RunnerDeployment`` objects with cron schedules (and a work pool if given)."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    root = _project(project)
    deployments = []
    for spec in specs:
        flow = load_flow_from_entrypoint(str(root / spec.entrypoint))
        extra = {}
        if work_pool:
            extra = {"work_pool_name": work_pool, "job_variables": {"working_dir": str(root)}}
        deployments.append(
            flow.to_deployment(
                name=spec.name,
                schedules=[Cron(spec.cron, timezone=spec.timezone)],
                parameters=dict(spec.parameters),
                description=spec.description,
                tags=["mtlgen"],
                **extra,
            )
        )
    return deployments


def apply_deployments(
    specs: Sequence[DeploymentSpec], work_pool: str, project: Path | str = "."
) -> dict[str, str]:
    """Register the deployments for ``work_pool`` (created as a process pool if missing) with
    the Prefect API (PREFECT_API_URL); return ``flow/deployment`` -> deployment id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=work_pool, type="process"))
    ids = {}
    for spec, deployment in zip(specs, runner_deployments(specs, project, work_pool), strict=True):
        ids[f"{deployment.flow_name}/{spec.name}"] = str(deployment.apply(work_pool_name=work_pool))
    return ids


def serve_deployments(
    specs: Sequence[DeploymentSpec], project: Path | str = ".", limit: int | None = None
) -> None:
    """Serve the deployments from this process until interrupted (Ctrl-C)."""
    from prefect import serve

    serve(*runner_deployments(specs, project), limit=limit)
