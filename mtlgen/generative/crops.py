"""The lesion-centred cube the generator works in."""

from __future__ import annotations

import numpy as np

Box = tuple[slice, slice, slice]


def lesion_box(mask: np.ndarray, size: int) -> Box:
    """A cube of ``size`` voxels per side centred on the centroid of ``mask`` (the volume's
    centre when it is empty), shifted to lie inside the volume."""
    shape = mask.shape
    if len(shape) != 3 or min(shape) < size:
        raise ValueError(f"volume of shape {shape}: expected 3-D, at least {size} per side")
    points = np.argwhere(mask)
    centre = points.mean(axis=0) if len(points) else (np.asarray(shape) - 1) / 2
    starts = [
        int(min(max(round(c - (size - 1) / 2), 0), n - size))
        for c, n in zip(centre, shape, strict=True)
    ]
    return tuple(slice(s, s + size) for s in starts)  # type: ignore[return-value]
