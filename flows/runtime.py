"""What every flow shares: settings from params.yaml and the task runner they choose."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from mtlgen.config import FlowsConfig, Params, load_config


def load_params(
    params_file: str | Path = "params.yaml", overrides: list[str] | None = None
) -> Params:
    """Validate ``params_file`` (+ ``-S``-style overrides) with the same schema as the CLI."""
    return load_config(Path(params_file), list(overrides or []))


def api_url() -> str:
    """The Prefect API this process talks to (the temporary local server if none is set)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url)


def _task_runner(cfg: FlowsConfig) -> TaskRunner:
    if cfg.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.workers)
    from prefect_dask import DaskTaskRunner

    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": cfg.workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
        }
    )


@contextmanager
def task_runner(cfg: FlowsConfig) -> Iterator[TaskRunner]:
    """The task runner ``flows.task_runner`` names, started: Prefect's thread pool, or Dask (an
    existing scheduler at ``dask_address``, else a LocalCluster of ``workers`` single-threaded
    processes on 127.0.0.1 for this flow run). Dask workers report to this run's Prefect API,
    also when that is the temporary local server."""
    runner = _task_runner(cfg)
    if cfg.task_runner == "threads":
        with runner:
            yield runner
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url()}), runner:
        yield runner
