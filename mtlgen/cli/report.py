"""``mtlgen`` commands on patients over time: ``patient show`` and ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtlgen.cli.settings import config_from

app = typer.Typer()
patient_app = typer.Typer(help="Look at one patient over time.", no_args_is_help=True)
app.add_typer(patient_app, name="patient")

CheckpointOption = Annotated[
    Path | None,
    typer.Option(help="Forecast with this local checkpoint folder instead of the model registry."),
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        help="Registered model to forecast with: an alias or a version [predict.model]. "
        "Without such a model the report shows the measured data only."
    ),
]
UseModelOption = Annotated[
    bool, typer.Option("--model-forecast/--no-model", help="Forecast with a model or not.")
]


@patient_app.command("show")
def patient_show(
    ctx: typer.Context,
    patient: Annotated[str, typer.Argument(help="Pseudonym (or source id with --source-id).")],
    source_id: Annotated[
        bool, typer.Option(help="PATIENT is a source id: pseudonymise it with the key first.")
    ] = False,
    checkpoint: CheckpointOption = None,
    model: ModelOption = None,
    use_model: UseModelOption = True,
) -> None:
    """A patient's timeline: visits with dates and contrasts, measured lesion core and
    whole-lesion volume per visit (from the label, else from the model's segmentation, marked),
    growth rate and volume doubling time, the status by the thresholds in params.yaml, the next
    due date with the model's forecast there (interval and status probabilities), alignment
    quality and every scan awaiting review."""
    from mtlgen.registry.pseudonym import load_key, pseudonymise
    from mtlgen.report.model import report_model
    from mtlgen.report.records import read_patients
    from mtlgen.report.summary import summarise
    from mtlgen.report.terminal import render
    from mtlgen.track.run import TrackingUnavailable

    cfg = config_from(ctx)
    if source_id:
        patient = pseudonymise(patient, load_key(cfg.registry.key_file))
    try:
        (rows,) = read_patients(cfg.registry, [patient])
        with report_model(cfg, checkpoint, model, use_model) as chosen:
            summary, _ = summarise(rows, cfg, chosen.predictor(), chosen.described)
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(1) from None
    except (FileNotFoundError, ValueError, TrackingUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    render(summary, chosen.note)


@app.command()
def report(
    ctx: typer.Context,
    patient: Annotated[
        list[str],
        typer.Option(help="Build this patient's page (pseudonym; repeatable)."),
    ] = [],  # noqa: B006  (typer needs a literal default)
    all_: Annotated[
        bool, typer.Option("--all", help="Build every patient's page whose data or model changed.")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Output folder [report.out_dir].")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild pages even when unchanged.")] = False,
    checkpoint: CheckpointOption = None,
    model: ModelOption = None,
    use_model: UseModelOption = True,
) -> None:
    """Self-contained HTML reports: a page per patient and the cohort index OUT/index.html.

    A patient page shows the volume trajectory (measured points, linear and log-linear fits,
    the forecast with its interval, status bands), slices of every visit with lesion outlines
    on the baseline-aligned grid, the predicted follow-up, and provenance (model, data version,
    time). The index is a sortable, filterable, paginated table by status, growth rate and next
    due date, with counts per status. Pages whose fingerprint (registry rows, model, settings)
    is unchanged are kept; the index always lists every patient. Pseudonyms only.
    """
    from mtlgen.report.build import SourceIdLeak, build_reports
    from mtlgen.report.model import report_model
    from mtlgen.track.run import TrackingUnavailable

    if all_ == bool(patient):
        typer.echo("error: give --patient ID (repeatable) or --all", err=True)
        raise typer.Exit(2)
    cfg = config_from(ctx)
    target = out or cfg.report.out_dir
    try:
        with report_model(cfg, checkpoint, model, use_model) as chosen:
            typer.echo(f"model: {chosen.note}")
            result = build_reports(cfg, target, patient or None, chosen, force)
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(1) from None
    except (FileNotFoundError, ValueError, TrackingUnavailable, SourceIdLeak) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"built {len(result.built)} pages, {len(result.unchanged)} unchanged, in "
        f"{result.seconds:.1f} s -> {result.index}"
    )
