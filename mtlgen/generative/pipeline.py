"""Drawing residual samples: the reverse process from Gaussian noise, in batches, seeded."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from mtlgen.generative.network import ResidualDenoiser
from mtlgen.generative.schedulers import Sampler, sampling_scheduler


class ResidualDiffusionPipeline:
    """``denoiser`` + its ``training`` schedule -> residual samples for one conditioning."""

    def __init__(
        self,
        denoiser: ResidualDenoiser,
        training: DDPMScheduler,
        sampler: Sampler = "ddim",
        steps: int = 20,
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps {steps}: expected at least 1")
        self.denoiser, self.training = denoiser.eval(), training
        self.sampler, self.steps = sampler, steps

    @torch.no_grad()
    def __call__(
        self, cond: torch.Tensor, n_samples: int, seed: int = 0, batch_size: int = 8
    ) -> torch.Tensor:
        """``n_samples`` residuals ``[n, out_channels, *S]`` given ``cond`` ``[cond, *S]``; the
        same ``seed`` gives the same samples."""
        device = next(self.denoiser.parameters()).device
        generator = torch.Generator(device="cpu").manual_seed(seed)
        shape = (self.denoiser.out_channels, *cond.shape[1:])
        chunks = []
        for start in range(0, n_samples, batch_size):
            b = min(batch_size, n_samples - start)
            scheduler = sampling_scheduler(self.training, self.sampler)
            scheduler.set_timesteps(self.steps)
            x = torch.randn((b, *shape), generator=generator).to(device)
            c = cond[None].to(device).expand(b, *cond.shape)
            for t in scheduler.timesteps:
                eps = self.denoiser(x, t.expand(b).to(device), c)
                x = scheduler.step(eps, t, x).prev_sample
            chunks.append(x.float().cpu())
        return torch.cat(chunks)
