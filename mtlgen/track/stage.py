"""Tracked pipeline stages: what every train/evaluate run records besides its own numbers.

``stage_run`` opens a run (fail fast, FAILED on crash) that already holds the flattened settings,
the environment, the data version (git commit + DVC hashes of the stage's inputs) and the split
file's hash, and refuses anything that contains a source patient ID from the registry.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from mtlgen.config import Params
from mtlgen.io.atomic import write_text_atomic
from mtlgen.track.logger import MlflowLogger
from mtlgen.track.privacy import source_ids
from mtlgen.track.provenance import data_version, environment, file_sha256
from mtlgen.track.run import tracked_run
from mtlgen.track.versions import register_checkpoint

log = logging.getLogger(__name__)

REGISTERED = "registered.json"  # beside a checkpoint: the model name and version it became

_PASSWORD = re.compile(r"(://[^:/@\s\"]+:)[^\s\"]*@")


def settings_without_secrets(params: Params) -> dict:
    """``params`` as JSON-able dict with URL passwords (``user:secret@host``) masked."""
    text = json.dumps(params.model_dump(mode="json"))
    return json.loads(_PASSWORD.sub(r"\1***@", text))


@contextmanager
def stage_run(
    params: Params, stage: str, inputs: Sequence[Path | str], split_file: Path | None = None
) -> Iterator[MlflowLogger]:
    """A tracked run named ``stage`` with settings, environment and data version logged."""
    forbidden = source_ids(params.registry.url, params.registry.sqlite_timeout_s)
    with tracked_run(params.tracking, stage, {"mtlgen.stage": stage}, forbidden) as run:
        run.log_params(settings_without_secrets(params))
        run.log_params({"env": environment()})
        version = data_version([str(p) for p in inputs])
        if split_file is not None:
            version["split_sha256"] = file_sha256(split_file)
        run.log_params({"data": version})
        run.set_tags({"mtlgen.git_commit": version["git.commit"]})
        yield run


def log_evaluation(run: MlflowLogger, out_dir: Path) -> dict[str, float]:
    """Log the mean of every metric in ``out_dir/metrics.json`` as
    ``<predictor>.<kind>.<metric>`` and the evaluation's files as artifacts."""
    metrics = json.loads((out_dir / "metrics.json").read_text())
    means = {
        f"{predictor}.{kind}.{name}": entry["mean"]
        for predictor, kinds in metrics["results"].items()
        for kind, block in kinds.items()
        for name, entry in block.items()
        if entry.get("mean") is not None
    }
    run.log_metrics(means)
    run.log_params({"evaluation": {"split_sha256": metrics["meta"]["split_sha256"]}})
    for path in sorted(out_dir.iterdir()):
        if path.is_file():
            run.log_artifact(path, "evaluation")
    return means


def model_name_for(params: Params, task: str) -> str:
    """The multi-task model's registered name, or ``<name>-<task>`` for a single-task baseline."""
    return params.tracking.model_name if task == "all" else f"{params.tracking.model_name}-{task}"


def register_trained(run: MlflowLogger, params: Params, checkpoint_dir: Path, task: str) -> str:
    """Register ``checkpoint_dir`` (logged as a pyfunc model of ``run``) as ``candidate`` and
    write ``registered.json`` beside it so that evaluation and promotion know its version."""
    name = model_name_for(params, task)
    version = register_checkpoint(checkpoint_dir, name, {"mtlgen.task": task, "run_id": run.run_id})
    record = {"model_name": name, "version": version, "run_id": run.run_id}
    write_text_atomic(checkpoint_dir / REGISTERED, json.dumps(record, indent=2) + "\n")
    run.set_tags({"mtlgen.model_version": f"{name}/{version}"})
    return version


def registered_version(checkpoint_dir: Path) -> dict[str, str] | None:
    """What ``register_trained`` recorded beside ``checkpoint_dir``, if anything."""
    path = Path(checkpoint_dir) / REGISTERED
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        return {k: str(record[k]) for k in ("model_name", "version", "run_id")}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a registration record ({exc})") from None


def train_and_register(
    params: Params, out_dir: Path | None = None, resume: bool = True
) -> tuple[Any, str | None]:
    """``train_model`` inside a tracked run, calibrate its best checkpoint's volume intervals on
    the validation patients (``mtlgen.evaluate.calibration.calibrate_checkpoint``), then register
    it as candidate.

    Returns the ``TrainResult`` and the registered version. Under torchrun only rank 0 tracks
    and registers (version None elsewhere). ``train.task: image_seg`` trains the image-only
    segmentation peer instead (``mtlgen.train.segmenter``), tracked but neither calibrated nor
    registered (it is a yardstick, never a champion). ``train.task: generative`` trains the
    diffusion generator on the forecasts of ``generative.base`` (``train_generator_on_base``)
    and registers it as ``<model_name>-generative``.
    """
    from mtlgen.data.splits import load_split
    from mtlgen.evaluate.calibration import calibrate_checkpoint
    from mtlgen.registry.series import load_series
    from mtlgen.train.loop import train_model
    from mtlgen.train.segmenter import train_segmenter

    split_file = params.data.split_file
    main_process = os.environ.get("RANK", "0") == "0"
    name = f"train-{params.train.task}"
    inputs = [params.preprocess.out_dir, split_file]
    tracking = stage_run(params, name, inputs, split_file) if main_process else nullcontext()
    with tracking as run:  # the tracking store answers before any data is read
        series = load_series(params.registry.url, params.registry.sqlite_timeout_s)
        split = load_split(split_file)
        if params.train.task == "image_seg":  # the image-only peer: evaluated, not registered
            return train_segmenter(params, series, split, out_dir, logger=run), None
        if params.train.task == "generative":
            result = train_generator_on_base(params, series, split, out_dir, resume, run)
            version = register_trained(run, params, result.checkpoint_dir, "generative")
            return result, version
        result = train_model(
            params, series, split, out_dir, task=params.train.task, logger=run, resume=resume
        )
        version = None
        if run is not None:
            calibrate_checkpoint(params, series, split, result.checkpoint_dir)
            version = register_trained(run, params, result.checkpoint_dir, params.train.task)
    return result, version


def train_generator_on_base(
    params: Params, series, split, out_dir: Path | None, resume: bool, run: MlflowLogger | None
):
    """Train the generator on ``generative.base``'s forecasts of the split's training patients
    (validation patients choose epoch and spread) and copy the base into the generator's
    ``best/base/``, so that the checkpoint (and the registered model) is whole. A base without
    a calibration that keeps its per-case errors (one calibrated before they were kept) is
    calibrated first, in a copy (``calibrate_checkpoint``; its weights untouched): that copy
    becomes the checkpoint's base."""
    from mtlgen.evaluate.calibration import calibrate_checkpoint
    from mtlgen.evaluate.cases import select_series
    from mtlgen.inference.generative import BASE
    from mtlgen.inference.model import ModelPredictor, load_predictor
    from mtlgen.train.generative import generated_rates, train_generator

    cfg = params.generative
    with tempfile.TemporaryDirectory(prefix="mtlgen-base-") as tmp:
        base_dir = Path(cfg.base)
        base = load_predictor(base_dir)
        if not isinstance(base, ModelPredictor) or not base.segments:
            raise ValueError(f"generative.base {cfg.base}: expected a multi-task checkpoint")
        if not generated_rates(base):
            log.warning("%s keeps no calibration errors: recalibrating a copy", base_dir)
            base_dir = Path(tmp) / BASE
            shutil.copytree(cfg.base, base_dir, ignore=shutil.ignore_patterns(REGISTERED))
            calibrate_checkpoint(params, series, split, base_dir)
            base = load_predictor(base_dir)
        if run is not None:
            run.log_params({"generative_base": str(cfg.base)})
        result = train_generator(
            params,
            base,
            base.contrasts,
            select_series(series, split.train, "train"),
            select_series(series, split.val, "validation"),
            Path(out_dir or cfg.out_dir),
            progress=True,
            resume=resume,
            logger=run,
        )
        target = result.checkpoint_dir / BASE
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(base_dir, target, ignore=shutil.ignore_patterns(REGISTERED))
    return result


def evaluate_tracked(params: Params, out_dir: Path | str | None = None, progress: bool = True):
    """``evaluate_from_params`` inside a tracked ``evaluate`` run; the metrics are logged too."""
    from mtlgen.evaluate.pipeline import evaluate_from_params

    out_dir = Path(out_dir or params.evaluate.out_dir)
    inputs = [
        params.preprocess.out_dir,
        params.data.split_file,
        *map(str, params.evaluate.checkpoints.values()),
    ]
    with stage_run(params, "evaluate", inputs, params.data.split_file) as run:
        result = evaluate_from_params(params, out_dir, progress=progress)
        log_evaluation(run, out_dir)
    return result
