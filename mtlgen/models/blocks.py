"""Building blocks of the spatio-temporal network: encoder, decoder, time embedding, fusion."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import ResidualUnit
from torch import nn

HEAD_SLOPE = 0.25  # negative slope of the heads' activation


class Encoder(nn.Module):
    """MONAI residual units, each halving the resolution (level 0 is at 1/2 of the input)."""

    def __init__(self, spatial_dims: int, in_channels: int, features: Sequence[int]) -> None:
        super().__init__()
        chans = [in_channels, *features]
        self.levels = nn.ModuleList(
            ResidualUnit(
                spatial_dims,
                chans[i],
                chans[i + 1],
                strides=2,
                subunits=2,
                norm="instance",
                act="leakyrelu",
            )
            for i in range(len(features))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of every level, finest first, bottleneck last."""
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats


class Decoder(nn.Module):
    """UNet decoder: upsample, concatenate the skip, residual unit; returns the finest decoder
    level (half the input resolution): the task heads bring it to full resolution."""

    def __init__(self, spatial_dims: int, features: Sequence[int]) -> None:
        super().__init__()
        f = list(features)
        self.stages = nn.ModuleList(
            ResidualUnit(spatial_dims, f[i + 1] + f[i], f[i], subunits=1, norm="instance")
            for i in reversed(range(len(f) - 1))
        )

    def forward(self, bottleneck: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        x = bottleneck
        for stage, skip in zip(self.stages, reversed(skips), strict=True):
            x = F.interpolate(x, size=skip.shape[2:], mode="nearest")
            x = stage(torch.cat([x, skip], dim=1))
        return x


def _pointwise(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1x1 convolution without bias: weight [O, C], x [N, C, *S] -> [N, O, *S], as a matrix
    product on the contiguous tensor (no memory-format reorder): forward + backward 0.28x the
    time of a 1x1 ``F.conv3d`` at a head's size on 2 CPU cores (``bench/kernels.py``)."""
    return torch.einsum("oc,nc...->no...", weight, x)


def _double(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Linear 2x upsampling along ``axis`` (``align_corners=False``, edges repeated): output 2i
    is 0.75 x[i] + 0.25 x[i-1], 2i+1 is 0.75 x[i] + 0.25 x[i+1], each written in one pass."""
    n = x.shape[axis]
    out = x.new_empty((*x.shape[:axis], n, 2, *x.shape[axis + 1 :]))
    even, odd = out.select(axis + 1, 0), out.select(axis + 1, 1)
    inner, left, right = n - 1, x.narrow(axis, 0, n - 1), x.narrow(axis, 1, n - 1)
    torch.lerp(right, left, 0.25, out=even.narrow(axis, 1, inner))
    torch.lerp(left, right, 0.25, out=odd.narrow(axis, 0, inner))
    even.narrow(axis, 0, 1).copy_(x.narrow(axis, 0, 1))
    odd.narrow(axis, n - 1, 1).copy_(x.narrow(axis, n - 1, 1))
    return out.flatten(axis, axis + 1)


def _double_adjoint(grad: torch.Tensor, axis: int) -> torch.Tensor:
    """The transpose of ``_double``: the gradient of its input from its output's."""
    n = grad.shape[axis] // 2
    pairs = grad.reshape(*grad.shape[:axis], n, 2, *grad.shape[axis + 1 :])
    even, odd = pairs.select(axis + 1, 0), pairs.select(axis + 1, 1)
    out = torch.add(even, odd).mul_(0.75)
    out.narrow(axis, 0, n - 1).add_(even.narrow(axis, 1, n - 1), alpha=0.25)
    out.narrow(axis, 1, n - 1).add_(odd.narrow(axis, 0, n - 1), alpha=0.25)
    out.narrow(axis, 0, 1).add_(even.narrow(axis, 0, 1), alpha=0.25)
    out.narrow(axis, n - 1, 1).add_(odd.narrow(axis, n - 1, 1), alpha=0.25)
    return out


class _LinearDoubling(torch.autograd.Function):
    """Separable linear 2x upsampling of every spatial axis with its hand-written transpose as
    the backward pass (autograd over shifted copies would allocate and zero-fill several
    full-size buffers per axis)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        for axis in reversed(range(2, x.dim())):
            x = _double(x, axis)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        for axis in range(2, grad.dim()):
            grad = _double_adjoint(grad, axis)
        return grad


def upsample_linear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(Bi/tri)linear upsampling of [N, C, *S] to ``size`` (``align_corners=False``). Exact
    doubling, the decoder's case, is computed separably with a hand-written backward pass
    (``_LinearDoubling``): forward + backward 0.45x the time of ``F.interpolate`` at a head's
    size on 2 CPU cores, equal to 2e-7 (``bench/kernels.py``). Other sizes: ``F.interpolate``."""
    size = tuple(size)
    if size != tuple(2 * n for n in x.shape[2:]):
        mode = "trilinear" if x.dim() == 5 else "bilinear"
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
    return _LinearDoubling.apply(x.contiguous())


class PointwiseHead(nn.Module):
    """Task output at full resolution from decoder features (at their coarser resolution) and
    extra full-resolution inputs, each [N, c_i, *S] or a per-sample constant [N, c_i, 1, ...].

    Layer 1 is a 1x1 convolution of [upsampled features, extras]; it is computed as the
    features' projection *before* trilinear upsampling (exact: upsampling is linear with
    weights summing to one) plus one projection per extra input, so no full-resolution
    concatenation is built. Then instance norm, a leaky ReLU (slope 0.25: PReLU's start, fixed,
    since a learned slope's backward pass costs 4x the layer's) and a 1x1 output layer. 1x1 layers
    only: full-resolution 3x3 convolutions would cost most of a CPU step, and the decoder
    features already carry the spatial context.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        out_channels: int,
        extra_channels: Sequence[int] = (),
    ) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.features = conv(channels, channels, kernel_size=1, bias=False)  # norm follows
        bound = 1.0 / math.sqrt(channels + sum(extra_channels))  # a fused layer's default init
        self.extras = nn.ParameterList(
            nn.Parameter(torch.empty(channels, c).uniform_(-bound, bound)) for c in extra_channels
        )
        self.out = nn.Parameter(
            torch.empty(out_channels, channels).uniform_(-1 / channels**0.5, 1 / channels**0.5)
        )
        self.out_bias = nn.Parameter(torch.zeros(out_channels))

    def forward(
        self, features: torch.Tensor, extras: Sequence[torch.Tensor], size: Sequence[int]
    ) -> torch.Tensor:
        x = upsample_linear(self.features(features).contiguous(), size)
        for weight, extra in zip(self.extras, extras, strict=True):
            x = x + _pointwise(weight.to(x.dtype), extra.to(x.dtype))
        x = F.leaky_relu(F.instance_norm(x), HEAD_SLOPE)
        bias = self.out_bias.reshape(-1, *([1] * (x.dim() - 2))).to(x.dtype)
        return _pointwise(self.out.to(x.dtype), x) + bias


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of a time in years (periods ~1 week to ~30 years), then an MLP."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(
            torch.linspace(math.log(2 * math.pi / 30), math.log(2 * math.pi * 52), half)
        )
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * half + 1, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, years: torch.Tensor) -> torch.Tensor:
        angles = years[..., None] * self.freqs
        return self.mlp(torch.cat([angles.sin(), angles.cos(), years[..., None]], dim=-1))


def broadcast(vec: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N, C] -> [N, C, 1, ...] matching ``like``'s spatial rank."""
    return vec.reshape(*vec.shape, *([1] * (like.dim() - 2)))


class TemporalFusion(nn.Module):
    """Attention over context visits at every bottleneck voxel, asked at the target time.

    Keys/values: each visit's features plus an embedding of its time relative to the target;
    query: the reference visit's features plus an embedding of the reference->target gap.
    Padded visits are masked out. The result is FiLM-modulated by the gap embedding, so any
    target date can be asked for.
    """

    def __init__(self, channels: int, time_dim: int, heads: int) -> None:
        super().__init__()
        self.visit_time = TimeEmbedding(time_dim, channels)
        self.gap_time = TimeEmbedding(time_dim, channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.film = nn.Linear(channels, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(
        self, z: torch.Tensor, years: torch.Tensor, valid: torch.Tensor, ref: torch.Tensor
    ) -> torch.Tensor:
        """``z`` [B, K, C, *S], ``years`` [B, K], ``valid`` [B, K], ``ref`` [B] -> [B, C, *S]."""
        b, k, c = z.shape[:3]
        spatial = z.shape[3:]
        rows = torch.arange(b, device=z.device)
        gap = -years[rows, ref]
        z_ref = z[rows, ref]
        keys = z + broadcast(self.visit_time(years).reshape(b * k, c), z.flatten(0, 1)).reshape(
            b, k, c, *([1] * len(spatial))
        )
        query = z_ref + broadcast(self.gap_time(gap), z_ref)
        n = math.prod(spatial)
        kv = keys.flatten(3).permute(0, 3, 1, 2).reshape(b * n, k, c)
        q = query.flatten(2).permute(0, 2, 1).reshape(b * n, 1, c)
        pad = (~valid).repeat_interleave(n, dim=0)
        out, _ = self.attn(q, kv, kv, key_padding_mask=pad, need_weights=False)
        fused = z_ref + out.reshape(b, n, c).permute(0, 2, 1).reshape(b, c, *spatial)
        gamma, beta = self.film(self.gap_time(gap)).chunk(2, dim=-1)
        return fused * (1 + broadcast(gamma, fused)) + broadcast(beta, fused)
