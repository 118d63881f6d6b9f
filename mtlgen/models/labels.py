"""Label maps (0 background, 1 lesion core, 2 edema) as tensors: one-hot class channels and the
most probable class per voxel, written for speed on a CPU (``bench/kernels.py`` measures both
against ``F.one_hot`` and ``argmax``)."""

from __future__ import annotations

import torch


def class_channels(label: torch.Tensor, dim: int) -> torch.Tensor:
    """Integer labels (0 bg, 1 core, 2 edema) as float one-hot channels inserted at ``dim``
    (one broadcast comparison, contiguous: 0.26x the time of ``F.one_hot`` + ``movedim``)."""
    classes = torch.arange(3, device=label.device).reshape(3, *([1] * (label.dim() - dim)))
    return (label.unsqueeze(dim) == classes).float()


def class_labels(probs: torch.Tensor) -> torch.Tensor:
    """Class index of the largest of ``probs`` [N, 3, *S] per voxel (the first on ties, as
    ``argmax``) -> [N, *S] int64. Elementwise over the 3 class maps: ``argmax`` over the
    channel dim of a contiguous tensor is a strided reduction (this: 0.05x its time)."""
    label = torch.zeros_like(probs[:, 0], dtype=torch.int64)
    best = probs[:, 0]
    for c in range(1, probs.shape[1]):
        label = label.masked_fill(probs[:, c] > best, c)
        best = torch.maximum(best, probs[:, c])
    return label
