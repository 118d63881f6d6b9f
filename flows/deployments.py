"""The scheduling shell: which flows can be deployed, and ``python -m flows.deployments``.

``DEPLOYMENTS`` maps each ``flows.schedules`` key to its flow and description; the library
(``mtlgen.orchestration.schedule`` / ``.deployments``) turns them into Prefect deployments.

    python -m flows.deployments list                  # what flows.schedules would deploy
    python -m flows.deployments apply --pool mtlgen   # deployments for a work pool (server)
    python -m flows.deployments serve [--limit N]     # serve them from this process

Global options come first, as with ``mtlgen``: ``python -m flows.deployments -p params.yaml
-S flows.timezone=Europe/Berlin apply``. Run it from the project folder (with flows/).
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from flows.pipeline import longitudinal_pipeline
from flows.predict import predict_follow_ups
from flows.register import register_scan_series
from flows.train import train_evaluate_promote
from mtlgen.cli.settings import config_from, settings_options
from mtlgen.orchestration.schedule import DeploymentSpec, ScheduledFlow, deployment_specs

DEPLOYMENTS: dict[str, ScheduledFlow] = {
    "register": ScheduledFlow(register_scan_series, "Register new scan series from flows.source"),
    "train": ScheduledFlow(
        train_evaluate_promote,
        "Split, train a candidate, evaluate it against the champion, promote if no worse",
    ),
    "predict": ScheduledFlow(
        predict_follow_ups,
        "Predict follow-ups due within flows.predict_window_days with the champion",
    ),
    "pipeline": ScheduledFlow(
        longitudinal_pipeline,
        "Register -> retrain if enough new visits -> evaluate -> promote -> predict",
    ),
}

app = typer.Typer(
    help="Scheduled deployments of the Prefect flows: one per flows.schedules entry "
    "(register, train, predict, pipeline -> cron, in flows.timezone).\n\n"
    "Settings come from params.yaml (validated); override single keys with -S key.path=value.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


app.callback()(settings_options)


def specs_from(ctx: typer.Context) -> list[DeploymentSpec]:
    """Validate the settings and build one spec per flows.schedules entry; exit 2 on error."""
    params_file, overrides = ctx.obj["params"], ctx.obj["overrides"]
    try:
        return deployment_specs(config_from(ctx), params_file, DEPLOYMENTS, overrides)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """Show the deployments flows.schedules defines (no Prefect server needed)."""
    for spec in specs_from(ctx):
        typer.echo(
            f"{spec.flow.name}/{spec.name}: cron '{spec.cron}' ({spec.timezone}): "
            f"{spec.description}"
        )


@app.command()
def apply(
    ctx: typer.Context,
    pool: Annotated[
        str, typer.Option(help="Prefect work pool (a process pool, created if missing).")
    ] = "mtlgen",
) -> None:
    """Create the scheduled deployments of flows.schedules on the Prefect server.

    Each flows.schedules entry (register, train, predict, pipeline -> cron, in flows.timezone)
    becomes a deployment for the work pool POOL, with this settings file and the -S overrides
    as its parameters. Needs PREFECT_API_URL (a `prefect server start`); run it from the
    project folder (with flows/), then start a worker: `prefect worker start --pool POOL`.
    """
    from mtlgen.orchestration.deployments import apply_deployments

    specs = specs_from(ctx)
    try:
        ids = apply_deployments(specs, pool)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for spec, (name, deployment_id) in zip(specs, ids.items(), strict=True):
        typer.echo(f"{name}: cron '{spec.cron}' ({spec.timezone}) -> pool {pool} [{deployment_id}]")


@app.command()
def serve(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option(help="At most this many flow runs at once.")] = None,
) -> None:
    """Serve the scheduled flows of flows.schedules from this one process (small sites).

    No work pool or worker needed: this process creates the deployments, runs them on their
    cron schedules and runs deployments triggered from the Prefect UI/API, until Ctrl-C.
    Without PREFECT_API_URL it talks to a local Prefect server (`prefect server start`); run
    it from the project folder (with flows/).
    """
    from mtlgen.orchestration.deployments import serve_deployments

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API poll otherwise
    specs = specs_from(ctx)
    try:
        for spec in specs:
            typer.echo(f"serving {spec.name}: cron '{spec.cron}' ({spec.timezone})")
        serve_deployments(specs, limit=limit)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app(prog_name="python -m flows.deployments")
