"""Gradient surgery for conflicting tasks (PCGrad, Yu et al. 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pcgrad(grads: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """Sum of task gradients after projecting each onto the normal plane of every other task's
    gradient it conflicts with (negative inner product), others taken in random order."""
    projected = []
    for i, g in enumerate(grads):
        g = g.clone()
        others = [j for j in range(len(grads)) if j != i]
        order = torch.randperm(len(others), generator=generator).tolist()
        for j in (others[o] for o in order):
            dot = torch.dot(g, grads[j])
            if dot < 0:
                g = g - dot / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
        projected.append(g)
    return torch.stack(projected).sum(dim=0)
