"""``mtlgen`` commands on models: train, evaluate, promote, predict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtlgen.cli.settings import config_from

app = typer.Typer()


@app.command()
def train(
    ctx: typer.Context,
    task: Annotated[
        str | None,
        typer.Option(
            help="all (multi-task), one of seg, future_seg, progression, image (a single-task"
            " baseline), image_seg (the image-only MONAI UNet segmentation peer) or generative"
            " (the diffusion generator on generative.base's forecasts) [train.task]."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder [train.out_dir].")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from OUT/last when its settings match.")
    ] = True,
) -> None:
    """Train the spatio-temporal multi-task model (or a single-task baseline, the segmentation
    peer, or the diffusion generator of follow-ups) on the split.

    Reads the registry's series and the split file; writes best/ and last/ checkpoints
    (safetensors + JSON), history.csv/json, affinity.json/png and train_result.json into OUT
    (the generator: best/ with its base model in best/base/, last/ and history.json into
    OUT [generative.out_dir]).
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
    if cfg.train.task == "generative":
        typer.echo(
            f"trained the generator: {result.epochs_run} epochs in {result.wall_time_s:.0f} s, "
            f"best epoch {result.best_epoch} (val_loss {result.best_val_loss:.4f}), spread "
            f"{result.settings.spread:g} -> {result.checkpoint_dir}"
        )
        return
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
            help="The evaluated checkpoint; its registered.json names the registered model and "
            "version (e.g. the generator's) [train.out_dir/best]."
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
    """Apply the promotion rule: the evaluated model becomes `champion` only if, on the same test
    split, it is non-inferior to the current champion on every evaluate.primary_metrics (worse by
    less than the metric's margin, by a paired bootstrap over the test cases at
    evaluate.promotion_confidence) and better on at least one by more than its min_gain. A
    generator checkpoint is judged by evaluate.generative_metrics instead.

    The decision and both sides' numbers are logged (MLflow run `promote-...`, tags on the model
    version). Exit status 0 either way; 2 on bad input.
    """
    import json

    from mtlgen.inference.generative import is_generator
    from mtlgen.io.atomic import write_text_atomic
    from mtlgen.track.promotion import promote_evaluated
    from mtlgen.track.run import TrackingUnavailable
    from mtlgen.track.stage import registered_version

    cfg = config_from(ctx)
    path = metrics or cfg.evaluate.out_dir / "metrics.json"
    try:
        evaluated = checkpoint or cfg.train.out_dir / "best"
        registered = registered_version(evaluated)
        ref = version or (registered["version"] if registered else "candidate")
        name = registered["model_name"] if registered else None
        decision = promote_evaluated(cfg, path, predictor, ref, name, is_generator(evaluated))
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc.filename}: not found (run `mtlgen evaluate` first)", err=True)
        raise typer.Exit(2) from None
    except (KeyError, ValueError, LookupError, TrackingUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if record is not None:
        write_text_atomic(record, json.dumps(decision.to_dict(), indent=2) + "\n")
    for row in decision.comparisons:
        champion = "-" if row.champion is None else f"{row.champion:.4f}"
        mark = ("better" if row.better else "non-inferior") if row.ok else "WORSE"
        interval = "" if row.low is None else f"  gain [{row.low:+.4f}, {row.high:+.4f}]"
        typer.echo(
            f"  {row.metric:32s} {row.direction}  candidate {row.candidate:.4f}  "
            f"champion {champion}{interval}  margin {row.margin:g}  {mark}"
        )
    verdict = "promoted to champion" if decision.promoted else "not promoted"
    typer.echo(
        f"{decision.model_name} v{decision.candidate_version}: {verdict} ({decision.reason})"
    )


def _run_predict(cfg, checkpoint: Path | None, patient: str | None, at: str | None, out: Path):
    """Refuse what cannot be predicted, then predict; return (rows, model source)."""
    import tempfile

    from mtlgen.ids import check_token
    from mtlgen.inference.fit import grid_problem
    from mtlgen.inference.followup import RunInfo, predict_followup, predict_followups
    from mtlgen.inference.model import load_predictor
    from mtlgen.inference.target import parse_at
    from mtlgen.orchestration.followup import prediction_data_version
    from mtlgen.registry.series import load_series
    from mtlgen.track.versions import download_forecaster

    series = load_series(cfg.registry.url, cfg.registry.sqlite_timeout_s)
    target = None  # the batch form: days_ahead after each last visit
    if patient is not None:
        check_token(patient, "--patient")
        chosen = [s for s in series if s.patient == patient]
        if not chosen:
            raise LookupError(f"--patient {patient}: no such patient with registered visits")
        series = chosen
        last = chosen[0].visits[-1].days
        target = parse_at(at, chosen[0]) if at else last + cfg.predict.days_ahead
    with tempfile.TemporaryDirectory(prefix="mtlgen-model-") as tmp:
        if checkpoint is not None:
            folder, source = checkpoint, {"checkpoint": str(checkpoint)}
        else:
            folder, source = download_forecaster(cfg, tmp)
        problem = grid_problem(folder, series)
        if problem is not None:
            raise ValueError(problem.replace(str(folder), str(source.get("checkpoint", source))))
        predictor = load_predictor(folder, n_samples=cfg.predict.n_samples)
        run = RunInfo.from_params(cfg, source, prediction_data_version(cfg))
        if target is not None:
            return [predict_followup(predictor, series[0], target, out, run)], source
        return predict_followups(predictor, series, cfg.predict.days_ahead, out, run), source


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
    space: Annotated[
        str | None,
        typer.Option(
            help="native: write on the grid of the last visit's source scan (its affine, shape, "
            "orientation); model: the model grid (RAS, isotropic, baseline-aligned) "
            "[predict.space]."
        ),
    ] = None,
    patient: Annotated[
        str | None, typer.Option(help="Predict one patient only (its pseudonym).")
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            help="With --patient: the date to predict, YYYY-MM-DD (after the first visit, on "
            "no visit; between two visits reconstructs it from the visits around it) or +DAYS "
            "after the last visit [predict.days_ahead]."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder [predict.out_dir].")] = None,
) -> None:
    """Predict registered patients' follow-up visits with the champion model.

    Without --patient: every patient's visit --days-ahead after its last one, and
    <out>/predictions.tsv. With --patient ID [--at YYYY-MM-DD|+DAYS]: that patient's visit at
    that date (the visits before it, and the next one for a date between two). Writes
    <out>/<pseudonym>/<YYYY-MM-DD>/ (day-<N>, days since baseline, when the registry has no
    dates): <contrast>.nii.gz (a generative model's sample mean), <contrast>_std.nii.gz (with
    samples), label.nii.gz, lesion_prob.nii.gz (when the model gives it), montage.png and
    prediction.json (model, params hash, seed and sampler, space, target, volume with its
    interval, status, visits). --space native (default) needs the last visit's source scan.

    The model comes from the MLflow registry: the generator's champion
    (models:/<tracking.model_name>-generative@champion, which draws predict.n_samples samples
    around its multi-task base's forecast) when one is registered and predict.generative is
    on, else the multi-task champion (models:/<tracking.model_name>@champion); --model names
    another alias or version; or --checkpoint. Refused (exit 2, with the
    reason): an unknown patient, a malformed --at, a date on or before the first visit or on an
    existing visit, --at without --patient, a model whose contrasts or down-sampling do not fit
    the registry's model grid, a source scan that is gone (native space).
    """
    from mtlgen.track.run import TrackingUnavailable

    for key, value in (
        ("predict.model", model),
        ("predict.days_ahead", days_ahead),
        ("predict.space", space),
    ):
        if value is not None:
            ctx.obj["overrides"].append(f"{key}={value}")
    cfg = config_from(ctx)
    if at is not None and patient is None:
        typer.echo("error: --at needs --patient (the batch form uses --days-ahead)", err=True)
        raise typer.Exit(2)
    out = out or cfg.predict.out_dir
    try:  # refusals (bad ids, targets, grids, missing sources) are ValueErrors
        rows, source = _run_predict(cfg, checkpoint, patient, at, out)
    except (FileNotFoundError, ValueError, LookupError, TrackingUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for row in rows if patient else []:
        typer.echo(f"wrote {out / row['folder']}")
    typer.echo(f"predicted {len(rows)} patients with {source} -> {out} ({cfg.predict.space})")


if __name__ == "__main__":
    app()
