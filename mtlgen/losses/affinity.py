"""Task affinity: pairwise cosine similarity of task-loss gradients on shared parameters.

Positive: one task's step also lowers the other's loss (they help each other); negative: they
conflict; near zero: unrelated. Measured per epoch by the trainer (``mtlgen.train.records``
writes it as JSON and a heatmap).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def gradient_cosine(grads: Sequence[torch.Tensor]) -> np.ndarray:
    """[T, T] cosine similarity of flat gradient vectors (0 where a gradient is zero)."""
    g = torch.stack([x.detach().double().cpu() for x in grads])
    norms = g.norm(dim=1)
    unit = g / norms.clamp_min(1e-30)[:, None]
    cos = (unit @ unit.T).clamp(-1, 1)
    cos[norms == 0] = 0.0
    cos[:, norms == 0] = 0.0
    cos.fill_diagonal_(1.0)
    return cos.numpy()
