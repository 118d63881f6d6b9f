"""The denoising network: MONAI's 3-D ``DiffusionModelUNet`` reading the noisy residual and the
conditioning channels side by side, predicting the noise."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from mtlgen.models.hub import LocalHubMixin


class ResidualDenoiser(nn.Module, LocalHubMixin, library_name="mtlgen"):
    """Predicts the noise in a noisy residual ``[B, out_channels, *S]`` at diffusion step
    ``timesteps`` ``[B]``, given the conditioning ``[B, cond_channels, *S]``. ``save_pretrained``
    / ``from_pretrained`` (``mtlgen.models.hub``) store and rebuild it."""

    def __init__(
        self,
        out_channels: int = 2,
        cond_channels: int = 9,
        channels: Sequence[int] = (16, 32, 32),
        num_res_blocks: int = 1,
        norm_num_groups: int = 8,
    ) -> None:
        super().__init__()
        if any(c % norm_num_groups for c in channels):
            raise ValueError(f"channels {list(channels)}: each a multiple of {norm_num_groups}")
        self.out_channels, self.cond_channels = out_channels, cond_channels
        self.unet = DiffusionModelUNet(
            spatial_dims=3,
            in_channels=out_channels + cond_channels,
            out_channels=out_channels,
            channels=tuple(channels),
            attention_levels=(False,) * len(channels),
            num_res_blocks=num_res_blocks,
            norm_num_groups=norm_num_groups,
        )

    def forward(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(torch.cat([noisy, cond], dim=1), timesteps)
