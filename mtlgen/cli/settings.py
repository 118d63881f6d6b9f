"""The settings every command line shares: ``-p params.yaml``, ``-S key=value`` overrides and
``-v``, read before the command (``mtlgen -S synth.patients=8 synth``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from mtlgen.config import ConfigError, Params, load_config


def settings_options(
    ctx: typer.Context,
    params: Annotated[
        Path,
        typer.Option("--params", "-p", help="Settings file (YAML) validated against the schema."),
    ] = Path("params.yaml"),
    override: Annotated[
        list[str],
        typer.Option(
            "--set", "-S", help="Override one setting, e.g. -S train.epochs=3 (repeatable)."
        ),
    ] = [],  # noqa: B006  (typer needs a literal default)
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """A Typer callback: configure logging and keep the settings file and overrides."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = {"params": params, "overrides": list(override)}


def config_from(ctx: typer.Context) -> Params:
    """Load and validate settings for a command; exit 2 with the key path on error."""
    try:
        return load_config(ctx.obj["params"], ctx.obj["overrides"])
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
