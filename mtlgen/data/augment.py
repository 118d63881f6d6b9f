"""Spatial augmentation that moves every visit of a sample together (MONAI transforms).

All images of a sample (every context visit and the target) are stacked as channels of one
array and all masks as channels of another, so one random draw applies to all of them.
"""

from __future__ import annotations

import numpy as np
from monai.transforms import Compose, RandAffined, RandFlipd

from mtlgen.config import DataConfig


def sample_augmentation(cfg: DataConfig, spatial_dims: int) -> Compose:
    """Left-right flip, small rotation and scaling: ``image`` bilinear, ``mask`` nearest."""
    angle = np.deg2rad(cfg.rotate_deg)
    rotate = (angle,) if spatial_dims == 2 else (angle, angle, angle)
    return Compose(
        [
            RandFlipd(keys=("image", "mask"), prob=cfg.flip_prob, spatial_axis=0),
            RandAffined(
                keys=("image", "mask"),
                prob=cfg.affine_prob,
                rotate_range=rotate,
                scale_range=(cfg.scale_fraction,) * spatial_dims,
                mode=("bilinear", "nearest"),
                padding_mode="border",
            ),
        ]
    )
