"""The image-only segmentation peer: a plain MONAI ``UNet`` from one visit's contrasts (a
missing contrast as zeros) to background / lesion core / edema logits. No other visit, no
mask, no time: what a user would train first, and the bar the multi-task network's
segmentation of a visit must clear (``mtlgen evaluate`` scores both on the same visits)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet
from torch import nn

from mtlgen.models.hub import LocalHubMixin


class ImageSegmenter(nn.Module, LocalHubMixin, library_name="mtlgen"):
    """MONAI ``UNet`` (residual units, strided convolutions) with ``features`` channels per
    level; ``contrasts`` names the input channels in order."""

    def __init__(
        self,
        contrasts: Sequence[str] = ("T1w", "FLAIR"),
        features: Sequence[int] = (8, 16, 32, 64),
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if not contrasts or len(set(contrasts)) != len(contrasts):
            raise ValueError(f"contrasts {list(contrasts)}: expected distinct names")
        if len(features) < 2:
            raise ValueError(f"features {list(features)}: expected at least two levels")
        self.contrasts, self.spatial_dims = tuple(contrasts), spatial_dims
        self.unet = UNet(
            spatial_dims=spatial_dims,
            in_channels=len(self.contrasts),
            out_channels=3,
            channels=tuple(features),
            strides=(2,) * (len(features) - 1),
            num_res_units=2,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, C, *S] -> class logits [N, 3, *S]."""
        return self.unet(images)
