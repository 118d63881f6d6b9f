"""Scheduled deployments as plain data: which flow, when (cron + time zone), with which settings.

The library does not know the flows: the shell that owns them (``python -m flows.deployments``)
passes them in as a mapping of deployment name -> ``ScheduledFlow``. ``deployment_specs`` turns
``flows.schedules`` into one spec per scheduled name; ``orchestration.deployments`` hands the
specs to Prefect. Each deployment passes the absolute settings file and the ``-S`` overrides as
flow parameters, so a scheduled run validates the same params.yaml as the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlgen.config import Params, load_config


@dataclass(frozen=True)
class ScheduledFlow:
    """A flow that can be scheduled: the flow object (a Prefect ``Flow``, supplied by the shell)
    and what it does (the deployment's description)."""

    flow: Any
    description: str


@dataclass(frozen=True)
class DeploymentSpec:
    name: str  # deployment name (= the flows.schedules key)
    flow: Any  # the flow object to deploy (a Prefect Flow)
    cron: str
    timezone: str
    description: str
    parameters: dict[str, object] = field(default_factory=dict)


def deployment_specs(
    params: Params,
    params_file: Path | str,
    flows: Mapping[str, ScheduledFlow],
    overrides: Sequence[str] = (),
) -> list[DeploymentSpec]:
    """One spec per ``flows.schedules`` entry, taking the flow from ``flows`` (deployment name ->
    flow); ``params_file`` (+ overrides) must validate."""
    params_file = Path(params_file).resolve()
    if not params_file.is_file():
        raise FileNotFoundError(f"{params_file}: settings file not found")
    load_config(params_file, list(overrides))  # what the scheduled runs will read
    missing = sorted(set(params.flows.schedules) - set(flows))
    if missing:
        raise ValueError(
            f"flows.schedules: no flow for {', '.join(missing)} (known: {', '.join(flows)})"
        )
    parameters = {"params_file": str(params_file), "overrides": list(overrides)}
    return [
        DeploymentSpec(
            name,
            flows[name].flow,
            cron,
            params.flows.timezone,
            flows[name].description,
            dict(parameters),
        )
        for name, cron in params.flows.schedules.items()
    ]
