"""Parameter-sharing strategies: how tasks obtain their encoder features.

Every trunk maps context visits to per-task ``TaskFeatures`` (per-visit multi-scale features
and the time-fused bottleneck at the target time):

- ``hard``: one encoder and one temporal fusion shared by all tasks.
- ``soft``: one encoder + fusion per task, coupled by an L2 (or L1) penalty that pulls
  corresponding weights towards their mean across tasks.
- ``mtan``: one shared encoder; each task applies its own soft attention mask (sigmoid of a
  1x1 convolution) at every level (Liu et al., MTAN).
- ``cross_task``: one shared encoder; per-task projections of the bottleneck exchange
  information by attention across tasks at every voxel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mtlgen.models.blocks import Encoder, TemporalFusion


@dataclass
class TaskFeatures:
    visits: list[torch.Tensor]  # per level [B*K, C_l, *S_l], full resolution first
    fused: torch.Tensor  # [B, C_bottleneck, *S_bottleneck] at the target time


class Trunk(nn.Module):
    """Base: ``forward(x, years, valid, ref) -> {task: TaskFeatures}``."""

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        self.tasks = tuple(tasks)

    def shared_modules(self, task: str) -> list[nn.Module]:
        raise NotImplementedError

    def affinity_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters whose task gradients are compared for task affinity (same order per task)."""
        return [p for m in self.shared_modules(task) for p in m.parameters()]

    def penalty(self) -> torch.Tensor:
        """Coupling penalty added to the loss (zero except for soft sharing)."""
        return torch.zeros(())

    @staticmethod
    def _fuse(fusion: TemporalFusion, bottleneck: torch.Tensor, years, valid, ref) -> torch.Tensor:
        b, k = years.shape
        return fusion(bottleneck.reshape(b, k, *bottleneck.shape[1:]), years, valid, ref)


class HardTrunk(Trunk):
    def __init__(self, tasks, spatial_dims, in_channels, features, time_dim, heads) -> None:
        super().__init__(tasks)
        self.encoder = Encoder(spatial_dims, in_channels, features)
        self.fusion = TemporalFusion(features[-1], time_dim, heads)

    def shared_modules(self, task: str) -> list[nn.Module]:
        return [self.encoder, self.fusion]

    def forward(self, x, years, valid, ref) -> dict[str, TaskFeatures]:
        feats = self.encoder(x)
        shared = TaskFeatures(feats, self._fuse(self.fusion, feats[-1], years, valid, ref))
        return dict.fromkeys(self.tasks, shared)


class SoftTrunk(Trunk):
    def __init__(
        self, tasks, spatial_dims, in_channels, features, time_dim, heads, penalty="l2", lam=1e-3
    ) -> None:
        super().__init__(tasks)
        self.encoders = nn.ModuleDict(
            {t: Encoder(spatial_dims, in_channels, features) for t in tasks}
        )
        self.fusions = nn.ModuleDict(
            {t: TemporalFusion(features[-1], time_dim, heads) for t in tasks}
        )
        self.kind, self.lam = penalty, lam

    def shared_modules(self, task: str) -> list[nn.Module]:
        return [self.encoders[task], self.fusions[task]]

    def forward(self, x, years, valid, ref) -> dict[str, TaskFeatures]:
        out = {}
        for t in self.tasks:
            feats = self.encoders[t](x)
            out[t] = TaskFeatures(feats, self._fuse(self.fusions[t], feats[-1], years, valid, ref))
        return out

    def penalty(self) -> torch.Tensor:
        """lam * sum over corresponding weights of |W_t - mean_t W| (squared for l2)."""
        groups = list(zip(*(self.affinity_parameters(t) for t in self.tasks), strict=True))
        total = groups[0][0].new_zeros(())
        for group in groups:
            offset = torch.stack(group) - group[0]  # exact zeros for identical weights
            diff = offset - offset.mean(dim=0, keepdim=True)
            total = total + (diff.pow(2).sum() if self.kind == "l2" else diff.abs().sum())
        return self.lam * total


class MtanTrunk(Trunk):
    def __init__(self, tasks, spatial_dims, in_channels, features, time_dim, heads) -> None:
        super().__init__(tasks)
        self.encoder = Encoder(spatial_dims, in_channels, features)
        self.fusion = TemporalFusion(features[-1], time_dim, heads)
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.attention = nn.ModuleDict(
            {t: nn.ModuleList(conv(f, f, kernel_size=1) for f in features) for t in tasks}
        )

    def shared_modules(self, task: str) -> list[nn.Module]:
        return [self.encoder, self.fusion]

    def masks(self, feats: list[torch.Tensor], task: str) -> list[torch.Tensor]:
        """The task's attention masks in (0, 1), one per level."""
        return [torch.sigmoid(a(f)) for a, f in zip(self.attention[task], feats, strict=True)]

    def forward(self, x, years, valid, ref) -> dict[str, TaskFeatures]:
        feats = self.encoder(x)
        out = {}
        for t in self.tasks:
            masked = [m * f for m, f in zip(self.masks(feats, t), feats, strict=True)]
            out[t] = TaskFeatures(masked, self._fuse(self.fusion, masked[-1], years, valid, ref))
        return out


class CrossTaskAttention(nn.Module):
    """Per-task 1x1 projections; at every voxel each task token attends to all task tokens."""

    def __init__(self, tasks: Sequence[str], channels: int, heads: int, spatial_dims: int) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.tasks = tuple(tasks)
        self.project = nn.ModuleDict({t: conv(channels, channels, kernel_size=1) for t in tasks})
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, c = x.shape[:2]
        spatial = x.shape[2:]
        per_task = torch.stack([self.project[t](x) for t in self.tasks], dim=1)  # [N, T, C, *S]
        tokens = per_task.flatten(3).permute(0, 3, 1, 2).reshape(-1, len(self.tasks), c)
        mixed, _ = self.attn(self.norm(tokens), self.norm(tokens), tokens, need_weights=False)
        tokens = tokens + mixed
        out = tokens.reshape(n, -1, len(self.tasks), c).permute(0, 2, 3, 1)
        return {t: out[:, i].reshape(n, c, *spatial) for i, t in enumerate(self.tasks)}


class CrossTaskTrunk(Trunk):
    def __init__(self, tasks, spatial_dims, in_channels, features, time_dim, heads) -> None:
        super().__init__(tasks)
        self.encoder = Encoder(spatial_dims, in_channels, features)
        self.fusion = TemporalFusion(features[-1], time_dim, heads)
        self.cross = CrossTaskAttention(tasks, features[-1], heads, spatial_dims)

    def shared_modules(self, task: str) -> list[nn.Module]:
        return [self.encoder, self.fusion]

    def forward(self, x, years, valid, ref) -> dict[str, TaskFeatures]:
        feats = self.encoder(x)
        fused = self.cross(self._fuse(self.fusion, feats[-1], years, valid, ref))
        visits = self.cross(feats[-1])
        return {t: TaskFeatures([*feats[:-1], visits[t]], fused[t]) for t in self.tasks}


def build_trunk(sharing: str, tasks: Sequence[str], **kwargs) -> Trunk:
    soft_args = {k: kwargs.pop(k) for k in ("penalty", "lam") if k in kwargs}
    if sharing == "soft":
        return SoftTrunk(tasks, **kwargs, **soft_args)
    trunks = {"hard": HardTrunk, "mtan": MtanTrunk, "cross_task": CrossTaskTrunk}
    if sharing not in trunks:
        raise ValueError(f"model.sharing {sharing!r}: expected hard, soft, mtan or cross_task")
    return trunks[sharing](tasks, **kwargs)
