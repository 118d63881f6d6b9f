"""Training of the diffusion generator (``mtlgen.generative``) on the residuals of a trained
multi-task model's forecasts.

Cases: every future target of the training patients with every context length up to
``data.max_context`` (the forecast from one visit misses differently from the forecast from
three); the validation patients' future targets (full context) choose the best epoch by their
denoising loss (fixed noise) and, after training, the ``spread`` of the samples: the factor of
``generative.spread_grid`` with the least CRPS on the validation residuals. The base model has
seen the training patients, so its residuals there are smaller than on new patients; the spread
fitted on the validation patients corrects the samples' width for that.

Seeded: one seed fixes the initial weights, the cubes drawn, their flips and the noise, so the
same inputs give the same generator on CPU. Writes ``model.safetensors`` + ``config.json`` (the
denoiser), ``generative.json`` (``GeneratorSettings``) and ``history.json`` into ``out_dir``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mtlgen.config import Params
from mtlgen.generative.crps import ensemble_crps
from mtlgen.generative.network import ResidualDenoiser
from mtlgen.generative.objective import denoising_loss
from mtlgen.generative.pipeline import ResidualDiffusionPipeline
from mtlgen.generative.schedulers import training_scheduler
from mtlgen.inference.generative import (
    GeneratorSettings,
    cond_channels,
    conditioning,
    residual_target,
)
from mtlgen.inference.prediction import Predictor
from mtlgen.io.atomic import write_text_atomic
from mtlgen.io.series import PatientSeries, VisitArrays, load_visit

log = logging.getLogger(__name__)


@dataclass
class ResidualCases:
    """Cubes of conditioning ``[N, 2C+5, *cube]``, residual ``[N, C, *cube]``, valid ``[N, C]``."""

    cond: torch.Tensor
    residual: torch.Tensor
    valid: torch.Tensor

    def __len__(self) -> int:
        return self.cond.shape[0]


def forecast_specs(
    patient: PatientSeries, max_context: int, every_context: bool
) -> list[tuple[tuple[int, ...], int]]:
    """(context indices, target index) of the patient's future targets: the last
    ``max_context`` visits before each, or (``every_context``) each length 1..``max_context``."""
    specs = []
    for j in range(1, len(patient.visits)):
        lengths = range(1, min(j, max_context) + 1) if every_context else [min(j, max_context)]
        specs += [(tuple(range(j - k, j)), j) for k in lengths]
    return specs


def residual_cases(
    predictor: Predictor,
    series: Sequence[PatientSeries],
    settings: GeneratorSettings,
    max_context: int,
    every_context: bool,
    progress: bool = False,
) -> ResidualCases:
    """The predictor's forecast residuals of every future target of ``series``, in cubes."""
    conds, residuals, valids = [], [], []
    for patient in tqdm(series, desc="forecast residuals", unit="patient", disable=not progress):
        loaded: dict[int, VisitArrays] = {}
        for context_idx, j in forecast_specs(patient, max_context, every_context):
            for i in (*context_idx, j):
                if i not in loaded:
                    loaded[i] = load_visit(patient.visits[i])
            context, target = [loaded[i] for i in context_idx], loaded[j]
            forecast = predictor.predict(context, target.days)
            box, cond = conditioning(
                context, forecast, target.days, settings.contrasts, settings.crop
            )
            residual, valid = residual_target(
                target, forecast, settings.contrasts, box, settings.residual_scale
            )
            conds.append(cond)
            residuals.append(residual)
            valids.append(valid)
    if not conds:
        raise ValueError("no future targets: the generator needs patients with two visits")
    return ResidualCases(
        torch.from_numpy(np.stack(conds)),
        torch.from_numpy(np.stack(residuals)),
        torch.from_numpy(np.stack(valids)),
    )


def _flipped(
    cases: ResidualCases, idx: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """The cubes ``idx``, each flipped along a random set of axes (the same for conditioning
    and residual): left-right and other mirrors are as plausible as the originals."""
    out = [cases.cond[idx].clone(), cases.residual[idx].clone()]
    flips = torch.rand((len(idx), 3), generator=generator) < 0.5
    for b in range(len(idx)):
        dims = [2 + d for d in range(3) if flips[b, d]]
        if dims:
            out[0][b] = out[0][b].flip([d - 1 for d in dims])
            out[1][b] = out[1][b].flip([d - 1 for d in dims])
    return out[0], out[1], cases.valid[idx]


@torch.no_grad()
def validation_loss(
    denoiser: ResidualDenoiser, scheduler, cases: ResidualCases, batch_size: int, seed: int
) -> float:
    """The denoising loss over every case with fixed noise and steps (comparable by epoch)."""
    denoiser.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for start in range(0, len(cases), batch_size):
        sl = slice(start, start + batch_size)
        loss = denoising_loss(
            denoiser, scheduler, cases.residual[sl], cases.cond[sl], cases.valid[sl], generator
        )
        n = cases.residual[sl].shape[0]
        total, count = total + float(loss) * n, count + n
    return total / count


def fit_spread(
    pipeline: ResidualDiffusionPipeline,
    cases: ResidualCases,
    n_samples: int,
    grid: Sequence[float],
    seed: int,
) -> tuple[float, dict[float, float]]:
    """The factor of ``grid`` for the samples' deviation from their mean with the least mean
    CRPS of the residuals of ``cases`` (valid channels), and every factor's CRPS."""
    totals = dict.fromkeys(grid, 0.0)
    count = 0
    for i in range(len(cases)):
        draws = pipeline(cases.cond[i], n_samples, seed + i).numpy()
        mean = draws.mean(axis=0)
        for c in np.flatnonzero(cases.valid[i].numpy()):
            truth = cases.residual[i, c].numpy()
            for factor in grid:
                scaled = mean[c] + factor * (draws[:, c] - mean[c])
                totals[factor] += float(ensemble_crps(scaled, truth).mean())
            count += 1
    scores = {f: t / max(count, 1) for f, t in totals.items()}
    return min(scores, key=scores.get), scores


def train_generator(
    params: Params,
    predictor: Predictor,
    contrasts: Sequence[str],
    train_series: Sequence[PatientSeries],
    val_series: Sequence[PatientSeries],
    out_dir: Path,
    progress: bool = False,
) -> GeneratorSettings:
    """Train the generator on ``predictor``'s residuals; write it to ``out_dir``."""
    cfg, seed = params.generative, params.seed
    settings = GeneratorSettings(
        tuple(contrasts), cfg.crop, cfg.residual_scale, cfg.train_timesteps, cfg.sampler, cfg.steps
    )
    max_context = params.data.max_context
    train = residual_cases(predictor, train_series, settings, max_context, True, progress)
    val = residual_cases(predictor, val_series, settings, max_context, False, progress)
    log.info("generator cases: %d training, %d validation cubes", len(train), len(val))
    torch.manual_seed(seed)
    denoiser = ResidualDenoiser(
        len(contrasts), cond_channels(contrasts), cfg.channels, cfg.num_res_blocks
    )
    scheduler = training_scheduler(cfg.train_timesteps)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(seed)
    best, best_state, history = float("inf"), None, []
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        denoiser.train()
        losses = []
        bar = tqdm(
            range(cfg.steps_per_epoch),
            desc=f"generator epoch {epoch + 1}/{cfg.epochs}",
            disable=not progress,
        )
        for _ in bar:
            idx = torch.randint(0, len(train), (cfg.batch_size,), generator=generator)
            cond, residual, valid = _flipped(train, idx, generator)
            loss = denoising_loss(denoiser, scheduler, residual, cond, valid, generator)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        val_loss = validation_loss(denoiser, scheduler, val, cfg.batch_size, seed)
        history.append(
            {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val_loss}
        )
        log.info(
            "generator epoch %d: train %.4f, validation %.4f",
            epoch + 1,
            history[-1]["train_loss"],
            val_loss,
        )
        if val_loss < best:
            best, best_state = val_loss, copy.deepcopy(denoiser.state_dict())
    denoiser.load_state_dict(best_state)
    pipeline = ResidualDiffusionPipeline(denoiser, scheduler, cfg.sampler, cfg.steps)
    chosen = torch.linspace(0, len(val) - 1, min(cfg.spread_cases, len(val))).round().long()
    spread_cases = ResidualCases(val.cond[chosen], val.residual[chosen], val.valid[chosen])
    spread, scores = fit_spread(pipeline, spread_cases, cfg.n_samples, cfg.spread_grid, seed)
    settings = replace(settings, spread=spread)
    out_dir = Path(out_dir)
    denoiser.save_pretrained(out_dir)
    settings.save(out_dir)
    record = {
        "history": history,
        "best_val_loss": best,
        "spread_crps": {str(k): v for k, v in scores.items()},
        "train_cases": len(train),
        "val_cases": len(val),
        "seconds": time.perf_counter() - start,
    }
    write_text_atomic(out_dir / "history.json", json.dumps(record, indent=2))
    log.info("generator: spread %.2f (validation CRPS by factor %s) -> %s", spread, scores, out_dir)
    return settings
