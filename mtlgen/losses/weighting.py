"""Loss weighting: L = sum_t lambda_t L_t with fixed, learned-uncertainty or DWA weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


class LossWeighting(nn.Module):
    """Combines task losses; ``terms`` returns each task's weighted contribution.

    - ``fixed``: lambda_t from ``task_weights``.
    - ``uncertainty``: learned homoscedastic uncertainty (Kendall et al. 2018):
      exp(-s_t) * w_t * L_t + s_t with learnable s_t = log sigma_t^2.
    - ``dwa``: dynamic weight averaging (Liu et al. 2019): lambda_t = T softmax(r_t / temp),
      r_t = L_t(e-1) / L_t(e-2) from epoch-mean losses; 1 for the first two epochs.

    State (learned s_t, DWA history) lives in the state dict, so checkpoints resume it.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        method: str = "fixed",
        task_weights: Mapping[str, float] | None = None,
        temperature: float = 2.0,
    ) -> None:
        super().__init__()
        if method not in ("fixed", "uncertainty", "dwa"):
            raise ValueError(f"train.weighting {method!r}: expected fixed, uncertainty or dwa")
        self.tasks, self.method, self.temperature = tuple(tasks), method, temperature
        weights = task_weights or {}
        self.register_buffer("base", torch.tensor([float(weights.get(t, 1.0)) for t in self.tasks]))
        self.log_var = nn.Parameter(
            torch.zeros(len(self.tasks)), requires_grad=method == "uncertainty"
        )
        self.register_buffer("history", torch.full((2, len(self.tasks)), float("nan")))

    def weights(self) -> torch.Tensor:
        """Current multiplicative weights lambda_t."""
        if self.method == "uncertainty":
            return self.base * torch.exp(-self.log_var)
        if self.method == "dwa" and not torch.isnan(self.history).any():
            ratio = self.history[1] / self.history[0].clamp_min(1e-12)
            return self.base * len(self.tasks) * torch.softmax(ratio / self.temperature, dim=0)
        return self.base

    def terms(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        w = self.weights()
        out = {t: w[i] * losses[t] for i, t in enumerate(self.tasks)}
        if self.method == "uncertainty":
            out = {t: v + self.log_var[i] for i, (t, v) in enumerate(out.items())}
        return out

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.terms(losses).values())

    @torch.no_grad()
    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Record the epoch's mean task losses (DWA reads the last two epochs)."""
        self.history[0] = self.history[1].clone()
        self.history[1] = torch.tensor([float(mean_losses[t]) for t in self.tasks])
