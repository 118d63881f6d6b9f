"""Training of the diffusion generator (``mtlgen.generative``) on the residuals of a trained
multi-task model's forecasts (``mtlgen.train.residuals``).

The validation patients' cubes choose the best epoch by their denoising loss (fixed noise) and,
after training, the samples' ``centre`` and ``spread`` (``fit_sample_shape``): how far the
samples' mean moves from the deterministic forecast (least MAE) and how wide they are around it
(least CRPS). The base model has seen the training patients, so its residuals there are smaller
than on new patients; the factors fitted on the validation patients correct for that. The
samples' volumes are calibrated to the base forecast's errors on its own calibration cases
(``sample_volume_spread``, ``mtlgen.generative.volumes``): a base without them is refused
before any training.

On CUDA when present (``train.device``), with bfloat16 autocast; the cubes stay in host memory.
Seeded: one seed fixes the initial weights, the cubes drawn, their flips and the noise, so the
same inputs give the same generator on CPU. Resumable: after every epoch ``last/`` holds the
weights, the optimizer, the random generator's state and the loop's counters in one safetensors
file (``mtlgen.train.state``); a run with the same settings and cases continues from it and
ends with the same generator as an uninterrupted one. Writes into ``out_dir``: ``best/``
(``model.safetensors`` + ``config.json`` of the denoiser and ``generative.json``), ``last/``
and ``history.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mtlgen.config import GenerativeConfig, Params
from mtlgen.generative.crps import ensemble_crps
from mtlgen.generative.labels import CLASSES
from mtlgen.generative.network import ResidualDenoiser
from mtlgen.generative.objective import denoising_loss
from mtlgen.generative.pipeline import ResidualDiffusionPipeline
from mtlgen.generative.schedulers import training_scheduler
from mtlgen.generative.volumes import GENERATED_KINDS, VolumeSpread
from mtlgen.inference.generative import (
    GeneratorSettings,
    cond_channels,
    out_channels,
)
from mtlgen.inference.prediction import Predictor
from mtlgen.io.atomic import write_text_atomic
from mtlgen.io.series import PatientSeries
from mtlgen.train.distributed import select_device
from mtlgen.train.loop import TrainLogger
from mtlgen.train.residuals import ResidualCases, flipped_batch, residual_cases
from mtlgen.train.state import load_train_state, read_loop, save_train_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeneratorResult:
    """What ``train_generator`` built: the best checkpoint and how it got there."""

    checkpoint_dir: Path
    settings: GeneratorSettings
    epochs_run: int  # by this call (a resumed run counts its own part)
    best_epoch: int
    best_val_loss: float
    wall_time_s: float


def _autocast(device: torch.device):
    """bfloat16 autocast on CUDA (the loss is taken in float32), nothing on CPU."""
    return torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def validation_loss(
    denoiser: ResidualDenoiser, scheduler, cases: ResidualCases, batch_size: int, seed: int
) -> float:
    """The denoising loss over every case with fixed noise and steps (comparable by epoch)."""
    denoiser.eval()
    device = next(denoiser.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for start in range(0, len(cases), batch_size):
        sl = slice(start, start + batch_size)
        batch = (t[sl].to(device) for t in (cases.residual, cases.cond, cases.valid))
        with _autocast(device):
            loss = denoising_loss(denoiser, scheduler, *batch, generator)
        n = cases.residual[sl].shape[0]
        total, count = total + float(loss) * n, count + n
    return total / count


@dataclass(frozen=True)
class SampleShape:
    """The factors fitted on validation cubes (see ``fit_sample_shape``) and every tried
    factor's score."""

    centre: float
    spread: float
    scores: dict[str, dict[float, float]]


def _image_scores(
    draws: list[np.ndarray], cases: ResidualCases, n_images: int, cfg: GenerativeConfig
) -> tuple[float, float, dict[str, dict[float, float]]]:
    """(centre, spread, scores) of the image channels: MAE of the scaled mean, then CRPS."""
    mae, crps = dict.fromkeys(cfg.centre_grid, 0.0), dict.fromkeys(cfg.spread_grid, 0.0)
    channels = [
        (i, c) for i in range(len(cases)) for c in np.flatnonzero(cases.valid[i, :n_images])
    ]
    for i, c in channels:
        mean, truth = draws[i][:, c].mean(axis=0), cases.residual[i, c].numpy()
        for factor in cfg.centre_grid:
            mae[factor] += float(np.abs(factor * mean - truth).mean())
    centre = min(mae, key=mae.get)
    for i, c in channels:
        sample, truth = draws[i][:, c], cases.residual[i, c].numpy()
        mean = sample.mean(axis=0)
        for factor in cfg.spread_grid:
            scaled = centre * mean + factor * (sample - mean)
            crps[factor] += float(ensemble_crps(scaled, truth).mean())
    count = max(len(channels), 1)
    scores = {
        "centre_mae": {f: v / count for f, v in mae.items()},
        "spread_crps": {f: v / count for f, v in crps.items()},
    }
    return centre, min(crps, key=crps.get), scores


def generated_rates(predictor: Predictor) -> dict[str, list[float]]:
    """The base forecast's signed errors per year on its calibration cases of the generated
    kinds, by group (``rates`` of its ``calibration.json``; empty when it keeps none)."""
    calibration = getattr(predictor, "calibration", None)
    rates = {} if calibration is None else calibration.rates
    return {g: r for g, r in rates.items() if g.split(":")[0] in GENERATED_KINDS}


def sample_volume_spread(predictor: Predictor, min_days: float) -> VolumeSpread:
    """The spread the samples' volumes are calibrated to: quantiles of ``generated_rates``."""
    generated = generated_rates(predictor)
    if not generated:
        raise ValueError(
            f"the base model ({predictor.name}) has no calibrated future volume errors"
            " (rates_per_year in its calibration.json): retrain it with `mtlgen train`"
        )
    return VolumeSpread.fit(generated, min_days)


def fit_sample_shape(
    pipeline: ResidualDiffusionPipeline, cases: ResidualCases, cfg: GenerativeConfig, seed: int
) -> SampleShape:
    """The image samples' shape on the validation ``cases``, ``cfg.n_samples`` draws each:
    ``centre`` (of ``cfg.centre_grid``) scales the mean image residual, chosen by the least MAE
    of the mean (0 keeps the deterministic forecast: an unhelpful generator cannot make the
    mean image worse); ``spread`` (of ``cfg.spread_grid``) scales the image deviations from
    it, chosen by the least CRPS."""
    draws = [pipeline(cases.cond[i], cfg.n_samples, seed + i).numpy() for i in range(len(cases))]
    n_images = cases.residual.shape[1] - len(CLASSES)
    return SampleShape(*_image_scores(draws, cases, n_images, cfg))


def _fingerprint(params: Params, train: ResidualCases, val: ResidualCases) -> str:
    """What a resumed training must share with the saved one: every setting but the number of
    epochs (training on for more epochs is a resume) and the very cases."""
    generative = params.generative.model_dump(mode="json", exclude={"epochs", "out_dir", "base"})
    settings = {"seed": params.seed, "generative": generative}
    text = json.dumps(settings, sort_keys=True) + train.fingerprint() + val.fingerprint()
    return hashlib.sha256(text.encode()).hexdigest()


def _start(
    last_dir: Path,
    fingerprint: str,
    denoiser: ResidualDenoiser,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    resume: bool,
) -> dict:
    """The loop's counters: from ``last_dir`` when it holds this very training, else fresh."""
    fresh = {"fingerprint": fingerprint, "epoch": 0, "history": [], "best": None, "best_epoch": 0}
    saved = read_loop(last_dir) if resume else None
    if saved is None or saved.get("fingerprint") != fingerprint:
        if saved is not None:
            log.warning("%s holds another training (settings or cases); starting afresh", last_dir)
        return fresh
    device = next(denoiser.parameters()).device
    loop, extra = load_train_state(last_dir, {"model": denoiser}, optimizer, device)
    generator.set_state(extra["rng"].cpu())
    log.info("resuming the generator from epoch %d", loop["epoch"])
    return loop


def _epoch(
    denoiser, scheduler, optimizer, cases: ResidualCases, cfg, generator, label: str, progress
) -> float:
    """One epoch of ``cfg.steps_per_epoch`` random flipped batches; the mean training loss."""
    denoiser.train()
    losses = []
    bar = tqdm(range(cfg.steps_per_epoch), desc=label, disable=not progress)
    device = next(denoiser.parameters()).device
    for _ in bar:
        idx = torch.randint(0, len(cases), (cfg.batch_size,), generator=generator)
        cond, residual, valid = (t.to(device) for t in flipped_batch(cases, idx, generator))
        with _autocast(device):
            loss = denoising_loss(denoiser, scheduler, residual, cond, valid, generator)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")
    return float(np.mean(losses))


def train_generator(
    params: Params,
    predictor: Predictor,
    contrasts: Sequence[str],
    train_series: Sequence[PatientSeries],
    val_series: Sequence[PatientSeries],
    out_dir: Path,
    progress: bool = False,
    resume: bool = True,
    logger: TrainLogger | None = None,
) -> GeneratorResult:
    """Train the generator on ``predictor``'s residuals into ``out_dir`` (see module doc)."""
    cfg, seed, out_dir = params.generative, params.seed, Path(out_dir)
    settings = GeneratorSettings(
        tuple(contrasts), cfg.crop, cfg.residual_scale, cfg.train_timesteps, cfg.sampler, cfg.steps
    )
    settings = replace(settings, n_samples=cfg.n_samples, seed=seed)
    volumes = sample_volume_spread(predictor, params.progression.interval_min_days)
    max_context, recon = params.data.max_context, params.data.reconstruction
    train = residual_cases(predictor, train_series, settings, max_context, recon, progress)
    val = residual_cases(predictor, val_series, settings, max_context, recon, progress)
    log.info("generator cases: %d training, %d validation cubes", len(train), len(val))
    torch.manual_seed(seed)
    device = select_device(params.train.device)
    denoiser = ResidualDenoiser(
        out_channels(contrasts), cond_channels(contrasts), cfg.channels, cfg.num_res_blocks
    ).to(device)
    scheduler = training_scheduler(cfg.train_timesteps)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(seed)
    fingerprint = _fingerprint(params, train, val)
    loop = _start(out_dir / "last", fingerprint, denoiser, optimizer, generator, resume)
    start, first_epoch = time.perf_counter(), loop["epoch"]
    for epoch in range(loop["epoch"] + 1, cfg.epochs + 1):
        label = f"generator epoch {epoch}/{cfg.epochs}"
        train_loss = _epoch(denoiser, scheduler, optimizer, train, cfg, generator, label, progress)
        val_loss = validation_loss(denoiser, scheduler, val, cfg.batch_size, seed)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss}
        loop["history"].append(row)
        log.info("generator epoch %d: train %.4f, validation %.4f", epoch, train_loss, val_loss)
        if logger is not None:
            logger.log_metrics({f"generator_{k}": v for k, v in row.items() if k != "epoch"}, epoch)
        if loop["best"] is None or val_loss < loop["best"]:
            loop["best"], loop["best_epoch"] = val_loss, epoch
            denoiser.save_pretrained(out_dir / "best")
        loop["epoch"] = epoch
        extra = {"rng": generator.get_state()}
        save_train_state(out_dir / "last", {"model": denoiser}, optimizer, loop, extra)
    best = ResidualDenoiser.from_pretrained(out_dir / "best").to(device)  # local
    pipeline = ResidualDiffusionPipeline(best, scheduler, cfg.sampler, cfg.steps)
    chosen = torch.linspace(0, len(val) - 1, min(cfg.spread_cases, len(val))).round().long()
    shape = fit_sample_shape(pipeline, val.subset(chosen), cfg, seed)
    settings = replace(
        settings, centre=shape.centre, spread=shape.spread, volumes=volumes.to_dict()
    )
    settings.save(out_dir / "best")
    record = {
        "history": loop["history"],
        "best_epoch": loop["best_epoch"],
        "best_val_loss": loop["best"],
        **{key: {str(k): v for k, v in by.items()} for key, by in shape.scores.items()},
        "volume_cases": volumes.cases,
        "train_cases": len(train),
        "val_cases": len(val),
        "seconds": time.perf_counter() - start,
    }
    write_text_atomic(out_dir / "history.json", json.dumps(record, indent=2))
    log.info("generator: %s; volume cases %s -> %s", shape, volumes.cases, out_dir)
    return GeneratorResult(
        out_dir / "best",
        settings,
        loop["epoch"] - first_epoch,
        loop["best_epoch"],
        loop["best"],
        record["seconds"],
    )
