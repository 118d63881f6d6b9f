"""The training objective: noise a clean residual at a random step and regress what the
schedule's ``prediction_type`` names: the noise (``epsilon``), the clean residual (``sample``)
or the velocity (``v_prediction``)."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from mtlgen.generative.network import ResidualDenoiser


def denoising_loss(
    denoiser: ResidualDenoiser,
    scheduler: DDPMScheduler,
    residual: torch.Tensor,
    cond: torch.Tensor,
    valid: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean squared error of the prediction over the ``valid`` channels ``[B, C]`` (a contrast
    the target or the forecast lacks has no residual to learn)."""
    b, device = residual.shape[0], residual.device
    noise = torch.randn(residual.shape, generator=generator).to(device)  # CPU draws: the same
    steps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator)
    steps = steps.to(device)  # numbers on every device
    noisy = scheduler.add_noise(residual, noise, steps)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "sample":
        target = residual
    elif kind == "v_prediction":
        target = scheduler.get_velocity(residual, noise, steps)
    else:
        raise ValueError(f"prediction_type {kind!r}: expected epsilon, sample or v_prediction")
    error = (denoiser(noisy, steps, cond).float() - target) ** 2
    weight = valid.to(error.dtype)[(...,) + (None,) * (error.ndim - 2)]
    return (error * weight).sum() / (weight.expand_as(error).sum().clamp_min(1.0))
