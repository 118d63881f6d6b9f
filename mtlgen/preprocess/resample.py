"""One interpolation from a source scan onto the model grid (orientation, spacing, crop/pad and
alignment in a single resampling)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mtlgen.io.validate import Volume
from mtlgen.preprocess.grid import Grid


def resample_to_grid(
    vol: Volume, grid: Grid, to_baseline: np.ndarray, order: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``vol`` on ``grid``; return (values, mask of grid voxels inside the scan's FOV).

    ``to_baseline`` maps the scan's world (RAS mm) onto the baseline's world, where the grid
    lives. ``order`` 1 is trilinear (images), 0 nearest neighbour (labels). Outside the field of
    view the value is 0.
    """
    grid_to_voxel = np.linalg.inv(vol.affine) @ np.linalg.inv(to_baseline) @ grid.affine
    matrix, offset = grid_to_voxel[:3, :3], grid_to_voxel[:3, 3]
    values = ndimage.affine_transform(
        vol.data, matrix, offset, output_shape=grid.shape, order=order, mode="constant", cval=0.0
    )
    ijk = np.indices(grid.shape, dtype=np.float32).reshape(3, -1)
    src = matrix.astype(np.float32) @ ijk + offset[:, None].astype(np.float32)
    upper = np.asarray(vol.data.shape, dtype=np.float32)[:, None] - 0.5
    inside = np.all((src >= -0.5) & (src <= upper), axis=0).reshape(grid.shape)
    return values, inside
