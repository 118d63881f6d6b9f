"""Seconds per training step and per prediction of the diffusion generator on the machine at
hand (CUDA with bfloat16 autocast when present, else CPU), at the default settings: the denoiser
of ``generative.channels`` on ``generative.crop``-voxel cubes, ``generative.batch_size`` cubes a
step, ``generative.n_samples`` draws of ``generative.steps`` DDIM steps a prediction. The cubes
are random (a step's cost does not depend on their values); the whole generator training is
``epochs x steps_per_epoch`` such steps plus building the cubes, which the base model's
forecasts dominate (``bench/generate.py`` times the whole).

    .venv/bin/python bench/generator_gpu.py            # default settings from params.yaml
"""

from __future__ import annotations

import argparse
import time

import torch

from mtlgen.config import load_config
from mtlgen.generative.network import ResidualDenoiser
from mtlgen.generative.objective import denoising_loss
from mtlgen.generative.pipeline import ResidualDiffusionPipeline
from mtlgen.generative.schedulers import training_scheduler


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-p", "--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps")
    args = parser.parse_args()
    cfg = load_config(args.params).generative
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    crop, batch, contrasts = cfg.crop, cfg.batch_size, 2
    torch.manual_seed(0)
    net = ResidualDenoiser(contrasts + 2, 3 * contrasts + 8, cfg.channels, cfg.num_res_blocks)
    net = net.to(device)
    scheduler = training_scheduler(cfg.train_timesteps)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    residual = torch.randn(batch, contrasts + 2, crop, crop, crop, device=device)
    cond = torch.randn(batch, 3 * contrasts + 8, crop, crop, crop, device=device)
    valid = torch.ones(batch, contrasts + 2, dtype=torch.bool, device=device)
    amp = device.type == "cuda"
    times = []
    for step in range(args.steps + 5):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            loss = denoising_loss(net, scheduler, residual, cond, valid)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _sync(device)
        if step >= 5:  # warm-up steps left out
            times.append(time.perf_counter() - start)
    step_s = sum(times) / len(times)
    total = cfg.epochs * cfg.steps_per_epoch
    pipe = ResidualDiffusionPipeline(net, scheduler, cfg.sampler, cfg.steps)
    pipe(cond[0].cpu(), cfg.n_samples)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for seed in range(5):
        pipe(cond[0].cpu(), cfg.n_samples, seed)
    _sync(device)
    draw_s = (time.perf_counter() - start) / 5
    name = torch.cuda.get_device_name() if amp else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; bf16 autocast: {amp}")
    print(f"training step ({batch} cubes of {crop}^3): {step_s * 1000:.1f} ms")
    print(f"{total} steps (epochs x steps_per_epoch): {step_s * total:.1f} s")
    print(f"draws per prediction ({cfg.n_samples} x {cfg.steps} {cfg.sampler}): {draw_s:.3f} s")


if __name__ == "__main__":
    main()
