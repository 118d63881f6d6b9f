"""``mtlgen`` commands on data: synthesise, show, register, look into the registry, split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtlgen.cli.settings import config_from

app = typer.Typer()


@app.command()
def synth(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Output BIDS folder [synth.out_dir].")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed [seed].")] = None,
    patients: Annotated[
        int | None, typer.Option(help="Number of patients [synth.patients].")
    ] = None,
    spacing: Annotated[
        float | None, typer.Option(help="Voxel size in mm [synth.spacing_mm].")
    ] = None,
    preview: Annotated[
        bool, typer.Option(help="Also write preview.png of the first patient.")
    ] = False,
) -> None:
    """Synthesise a longitudinal cohort on real MNI152 anatomy as a BIDS dataset.

    Lesions grow (Gompertz), stay or respond to treatment by a known law; every visit has its
    own head pose, scanner bias, noise and intensity scale. Ground truth (volumes, laws, poses)
    is written under derivatives/groundtruth.
    """
    from mtlgen.synth.cohort import write_cohort
    from mtlgen.synth.preview import preview_patient

    for key, value in (("synth.patients", patients), ("synth.spacing_mm", spacing)):
        if value is not None:
            ctx.obj["overrides"].append(f"{key}={value}")
    cfg = config_from(ctx)
    summary = write_cohort(cfg.synth, cfg.seed if seed is None else seed, out)
    typer.echo(
        f"cohort: {summary.patients} patients, {summary.visits} visits, {summary.images} images "
        f"-> {summary.out_dir}"
    )
    if preview:
        png = preview_patient(summary.out_dir, "001", summary.out_dir / "preview.png")
        typer.echo(f"preview: {png}")


@app.command()
def show(
    cohort: Annotated[Path, typer.Argument(help="A cohort written by `mtlgen synth`.")],
    patient: Annotated[str, typer.Option(help="Participant label, e.g. 001.")] = "001",
    out: Annotated[
        Path | None, typer.Option(help="PNG path [COHORT/preview-sub-<id>.png].")
    ] = None,
) -> None:
    """Plot one synthetic patient: visits side by side and the lesion-volume curve."""
    from mtlgen.synth.preview import preview_patient

    target = out or cohort / f"preview-sub-{patient.removeprefix('sub-')}.png"
    typer.echo(f"preview: {preview_patient(cohort, patient, target)}")


_MAX_EXIT = 100


@app.command()
def register(
    ctx: typer.Context,
    source: Annotated[
        Path,
        typer.Argument(help="A BIDS folder, a CSV/TSV manifest, or a folder of DICOM series."),
    ],
    registry: Annotated[
        str | None, typer.Option(help="Registry SQLAlchemy URL [registry.url].")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder of processed files [preprocess.out_dir].")
    ] = None,
    show_sources: Annotated[
        bool, typer.Option(help="Also print source file paths (they may hold source ids).")
    ] = False,
) -> None:
    """Register a scan series: record every file in the registry and align each follow-up to
    its patient's baseline on the model grid.

    Re-running on the same source adds and changes nothing; a changed file becomes a new
    version. Bad files are rejected with a one-line reason (see `mtlgen registry rejections`)
    and the rest goes on; files outside the source folder and registry.allowed_roots, devices
    and FIFOs are refused unread. Implausible scans are registered but held for review (see
    `mtlgen registry review`). Patients are shown by pseudonym and files by manifest line.
    Exit status: the number of files rejected in this run (capped at 100), 0 if none.
    """
    from mtlgen.io.sources import SourceError
    from mtlgen.register.run import register_source
    from mtlgen.registry.queries import format_table

    for key, value in (("registry.url", registry), ("preprocess.out_dir", out)):
        if value is not None:
            ctx.obj["overrides"].append(f"{key}={value}")
    cfg = config_from(ctx)
    try:
        result = register_source(source, cfg)
    except SourceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    rejected = result.rejected
    if rejected:
        rows = []
        for patient in result.patients:
            for r in patient.rejected:
                row = {"patient": patient.label, "line": r.line, "visit": r.visit, "kind": r.kind}
                rows.append(
                    {**row, **({"file": r.path} if show_sources else {}), "reason": r.reason}
                )
        typer.echo(format_table(rows))
    review = f" ({result.needs_review} held for review)" if result.needs_review else ""
    typer.echo(
        f"registered {result.registered}{review}, unchanged {result.unchanged}, rejected "
        f"{len(rejected)} files of {len(result.patients)} patients"
    )
    raise typer.Exit(min(len(rejected), _MAX_EXIT))


registry_app = typer.Typer(
    help="Look into the patient registry: patients, a patient's timeline, rejections.",
    no_args_is_help=True,
)
app.add_typer(registry_app, name="registry")


@registry_app.command("patients")
def registry_patients(ctx: typer.Context) -> None:
    """List patients (pseudonyms) with their baseline, visits and current scans."""
    from mtlgen.registry.queries import format_table, list_patients

    typer.echo(format_table(list_patients(config_from(ctx).registry)))


@registry_app.command("timeline")
def registry_timeline(
    ctx: typer.Context,
    patient: Annotated[str, typer.Argument(help="Pseudonym (or source id with --source-id).")],
    source_id: Annotated[
        bool, typer.Option(help="PATIENT is a source id: pseudonymise it with the key first.")
    ] = False,
) -> None:
    """Show a patient's visits: contrasts, versions, status and alignment quality (Mattes MI,
    and NCC with the baseline reference for the same contrast)."""
    from mtlgen.registry.pseudonym import load_key, pseudonymise
    from mtlgen.registry.queries import format_table, timeline

    cfg = config_from(ctx)
    if source_id:
        patient = pseudonymise(patient, load_key(cfg.registry.key_file))
    try:
        typer.echo(format_table(timeline(cfg.registry, patient)))
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(1) from None


@registry_app.command("rejections")
def registry_rejections(
    ctx: typer.Context,
    show_sources: Annotated[
        bool, typer.Option(help="Also print source file paths (they may hold source ids).")
    ] = False,
) -> None:
    """List every rejected file with its one-line reason, the number of patients it affects,
    the first of them (pseudonyms) and their manifest lines."""
    from mtlgen.registry.queries import format_table, list_rejections

    typer.echo(format_table(list_rejections(config_from(ctx).registry, show_sources)))


@registry_app.command("review")
def registry_review(
    ctx: typer.Context,
    review_id: Annotated[
        int | None, typer.Argument(metavar="ID", help="The review to settle.")
    ] = None,
    accept: Annotated[
        bool, typer.Option("--accept", help="Use the file for training and prediction.")
    ] = False,
    reject: Annotated[bool, typer.Option("--reject", help="Keep the file out for good.")] = False,
    all_: Annotated[bool, typer.Option("--all", help="List settled reviews too.")] = False,
) -> None:
    """List files the quality gate held back (implausible alignment to the baseline, or not
    looking like a head scan), or settle one: ID --accept or ID --reject. Held files stay out
    of training and prediction until accepted."""
    from mtlgen.registry.models import NEEDS_REVIEW
    from mtlgen.registry.queries import format_table, list_reviews, settle_review

    reg = config_from(ctx).registry
    if review_id is None:
        if accept or reject:
            typer.echo("error: --accept/--reject need a review ID", err=True)
            raise typer.Exit(2)
        typer.echo(format_table(list_reviews(reg, None if all_ else NEEDS_REVIEW)))
        return
    if accept == reject:
        typer.echo("error: give exactly one of --accept or --reject", err=True)
        raise typer.Exit(2)
    try:
        state = settle_review(reg, review_id, accept)
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"review {review_id}: {state}")


@app.command()
def split(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Split file [data.split_file].")] = None,
) -> None:
    """Assign the registry's patients to train/val/test (patient-level, fixed by seed).

    Assignment is by a seeded hash of the pseudonym, so patients added later never move the
    ones already assigned. The JSON file is meant to be tracked by DVC.
    """
    from mtlgen.data.splits import split_registry

    cfg = config_from(ctx)
    try:
        result, path = split_registry(cfg, out)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"split: {len(result.train)} train, {len(result.val)} val, {len(result.test)} test "
        f"-> {path}"
    )
