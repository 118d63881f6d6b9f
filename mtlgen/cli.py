"""The ``mtlgen`` command line: thin shells over library functions.

Global options come first: ``mtlgen -p params.yaml -S synth.patients=8 synth``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from mtlgen.config import ConfigError, Params, load_config

app = typer.Typer(
    help="Longitudinal, generative multi-task learning for medical images.\n\n"
    "Settings come from params.yaml (validated); override single keys with -S key.path=value.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("mtlgen")


@app.callback()
def main(
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
) -> None:
    """Register a scan series: record every file in the registry and align each follow-up to
    its patient's baseline on the model grid.

    Re-running on the same source adds and changes nothing; a changed file becomes a new
    version. Bad files are rejected with a one-line reason (see `mtlgen registry rejections`)
    and the rest goes on. Exit status: the number of files rejected in this run (capped at
    100), 0 if none.
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
        rows = [
            {"visit": r.visit, "kind": r.kind, "file": r.path, "reason": r.reason} for r in rejected
        ]
        typer.echo(format_table(rows))
    typer.echo(
        f"registered {result.registered}, unchanged {result.unchanged}, rejected {len(rejected)} "
        f"files of {len(result.patients)} patients"
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
def registry_rejections(ctx: typer.Context) -> None:
    """List every rejected file with its one-line reason."""
    from mtlgen.registry.queries import format_table, list_rejections

    typer.echo(format_table(list_rejections(config_from(ctx).registry)))


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


@app.command()
def train(
    ctx: typer.Context,
    task: Annotated[
        str | None,
        typer.Option(
            help="all (multi-task) or one of seg, future_seg, progression, image [train.task]."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder [train.out_dir].")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from OUT/last when its settings match.")
    ] = True,
) -> None:
    """Train the spatio-temporal multi-task model (or a single-task baseline) on the split.

    Reads the registry's series and the split file; writes best/ and last/ checkpoints
    (safetensors + JSON), history.csv/json, affinity.json/png and train_result.json into OUT.
    Interrupted runs resume from OUT/last. Under torchrun, processes average gradients.
    Tracked in MLflow (tracking.uri; fails fast if unreachable) and the best checkpoint is
    registered as the `candidate` of tracking.model_name (see `mtlgen promote`).
    """
    from mtlgen.track.run import TrackingUnavailable
    from mtlgen.track.stage import model_name_for, train_and_register

    if task is not None:
        ctx.obj["overrides"].append(f"train.task={task}")
    cfg = config_from(ctx)
    try:
        result, version = train_and_register(cfg, out, resume)
    except (FileNotFoundError, ValueError, TrackingUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if version is not None:
        name = model_name_for(cfg, cfg.train.task)
        typer.echo(f"registered {name} version {version} (alias candidate)")
    typer.echo(
        f"trained {','.join(result.tasks)}: {result.epochs_run} epochs in "
        f"{result.wall_time_s:.0f} s, best epoch {result.best_epoch} "
        f"(val_loss {result.best_val.get('val_loss', float('nan')):.4f}) -> {result.checkpoint_dir}"
    )


@app.command()
def evaluate(
    ctx: typer.Context,
    checkpoint: Annotated[
        list[str],
        typer.Option(
            help="Add a model to compare: NAME=FOLDER (repeatable) [evaluate.checkpoints]."
        ),
    ] = [],  # noqa: B006  (typer needs a literal default)
    out: Annotated[Path | None, typer.Option(help="Output folder [evaluate.out_dir].")] = None,
) -> None:
    """Compare models and baselines on the test patients of the split, side by side.

    Baselines (copy-last, linear and exponential volume extrapolation) always run with the
    configured checkpoints. For every future and reconstruction case: Dice and HD95 of the
    predicted masks, volume error, status accuracy / macro-F1, image MAE / PSNR / SSIM over the
    brain and over the region that truly changes; also per true progression status and per
    number of context visits. Writes metrics.json, cases.tsv, summary.md,
    summary.png and montage.png (see docs/evaluation.md). Tracked in MLflow (tracking.uri):
    every mean as <predictor>.<kind>.<metric>, the files as artifacts.
    """
    for item in checkpoint:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            typer.echo(f"error: --checkpoint {item!r}: expected NAME=FOLDER", err=True)
            raise typer.Exit(2)
        ctx.obj["overrides"].append(f"evaluate.checkpoints.{name}={folder}")
    cfg = config_from(ctx)
    from mtlgen.evaluate.pipeline import check_inputs
    from mtlgen.track.run import TrackingUnavailable
    from mtlgen.track.stage import evaluate_tracked

    try:
        check_inputs(cfg)  # before a tracked run is opened
        result = evaluate_tracked(cfg, out)
    except (FileNotFoundError, ValueError, TrackingUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for path in result.paths:
        typer.echo(f"wrote {path}")


@app.command()
def promote(
    ctx: typer.Context,
    metrics: Annotated[
        Path | None, typer.Option(help="metrics.json of `mtlgen evaluate` [evaluate.out_dir].")
    ] = None,
    predictor: Annotated[
        str, typer.Option(help="The evaluated model's name in metrics.json (NAME of --checkpoint).")
    ] = "mtl",
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="The evaluated checkpoint; its registered.json names the version "
            "[train.out_dir/best]."
        ),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(help="Version number or alias to judge instead of the checkpoint's."),
    ] = None,
    record: Annotated[
        Path | None, typer.Option(help="Also write the decision as JSON here (DVC tracks it).")
    ] = None,
) -> None:
    """Apply the promotion rule: the evaluated model becomes `champion` only if it is no worse
    than the current champion on every evaluate.primary_metrics, on the same test split.

    The decision and both sides' numbers are logged (MLflow run `promote-...`, tags on the model
    version). Exit status 0 either way; 2 on bad input.
    """
    import json

    from mtlgen.io.atomic import write_text_atomic
    from mtlgen.track.promotion import promote_evaluated
    from mtlgen.track.run import TrackingUnavailable
    from mtlgen.track.stage import registered_version

    cfg = config_from(ctx)
    path = metrics or cfg.evaluate.out_dir / "metrics.json"
    try:
        evaluation = json.loads(path.read_text())
        ref = version
        if ref is None:
            registered = registered_version(checkpoint or cfg.train.out_dir / "best")
            ref = registered["version"] if registered else "candidate"
        decision = promote_evaluated(cfg, evaluation, predictor, ref, source=str(path))
    except FileNotFoundError:
        typer.echo(f"error: {path}: not found (run `mtlgen evaluate` first)", err=True)
        raise typer.Exit(2) from None
    except (KeyError, ValueError, LookupError, TrackingUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if record is not None:
        write_text_atomic(record, json.dumps(decision.to_dict(), indent=2) + "\n")
    for row in decision.comparisons:
        champion = "-" if row.champion is None else f"{row.champion:.4f}"
        mark = "ok" if row.ok else "WORSE"
        typer.echo(
            f"  {row.metric:32s} {row.direction}  candidate {row.candidate:.4f}  "
            f"champion {champion}  {mark}"
        )
    verdict = "promoted to champion" if decision.promoted else "not promoted"
    typer.echo(
        f"{decision.model_name} v{decision.candidate_version}: {verdict} ({decision.reason})"
    )


@app.command()
def predict(
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Option(
            help="Registered model: an alias (champion, candidate) or a version "
            "number [predict.model]."
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Use this local checkpoint folder instead of the model registry."),
    ] = None,
    days_ahead: Annotated[
        float | None,
        typer.Option(help="Days after each patient's last visit [predict.days_ahead]."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder [predict.out_dir].")] = None,
) -> None:
    """Predict every registered patient's follow-up visit with the champion model.

    The model comes from the MLflow registry (models:/<tracking.model_name>@champion unless
    --model names another alias or version), loaded from its safetensors + JSON checkpoint.
    Writes <out>/<pseudonym>/{<contrast>,label}.nii.gz and prediction.json on the model grid,
    and <out>/predictions.tsv.
    """
    import tempfile

    from mtlgen.inference.followup import predict_followups
    from mtlgen.inference.model import load_predictor
    from mtlgen.registry.series import load_series
    from mtlgen.track.run import TrackingUnavailable
    from mtlgen.track.versions import download_checkpoint

    for key, value in (("predict.model", model), ("predict.days_ahead", days_ahead)):
        if value is not None:
            ctx.obj["overrides"].append(f"{key}={value}")
    cfg = config_from(ctx)
    with tempfile.TemporaryDirectory(prefix="mtlgen-model-") as tmp:
        try:
            if checkpoint is not None:
                folder, source = checkpoint, {"checkpoint": str(checkpoint)}
            else:
                folder, resolved = download_checkpoint(cfg.tracking, tmp, cfg.predict.model)
                source = {
                    "model_name": cfg.tracking.model_name,
                    "version": resolved,
                    "requested": cfg.predict.model,
                }
            predictor = load_predictor(folder)
            series = load_series(cfg.registry.url, cfg.registry.sqlite_timeout_s)
            rows = predict_followups(
                predictor, series, cfg.predict.days_ahead, out or cfg.predict.out_dir, source
            )
        except (FileNotFoundError, ValueError, LookupError, TrackingUnavailable) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    typer.echo(f"predicted {len(rows)} patients with {source} -> {out or cfg.predict.out_dir}")


if __name__ == "__main__":
    app()
