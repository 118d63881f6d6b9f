"""Model-grid volumes back onto a source scan's own grid (its affine, shape and orientation).

The inverse of registration's resampling (``mtlgen.preprocess.resample``): each source voxel
goes to the source world (the source affine), to the baseline's world (``to_baseline``) and to
a model-grid voxel (the inverse grid affine), where the model-grid volume is interpolated.
Images and probability maps are trilinear; labels are resampled class by class (each class's
one-hot map, trilinear) and take the most likely class, which is smoother than nearest
neighbour from 3 mm down to ~1 mm. Source voxels outside the model grid get 0 (background).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mtlgen.preprocess.grid import Grid


def source_to_model(model_affine: np.ndarray, source: Grid, to_baseline: np.ndarray) -> np.ndarray:
    """The 4x4 map from a source voxel index to a model-grid voxel index."""
    return np.linalg.inv(model_affine) @ np.asarray(to_baseline) @ source.affine


def _sample(
    volume: np.ndarray, voxel_map: np.ndarray, shape: tuple[int, ...], cval: float
) -> np.ndarray:
    """``volume`` (model grid) sampled trilinearly at every source voxel (``shape``)."""
    return ndimage.affine_transform(
        np.asarray(volume, dtype=np.float32),
        voxel_map[:3, :3],
        voxel_map[:3, 3],
        output_shape=shape,
        order=1,
        mode="constant",
        cval=cval,
    )


def image_to_source(
    image: np.ndarray, model_affine: np.ndarray, source: Grid, to_baseline: np.ndarray
) -> np.ndarray:
    """A model-grid image on the source grid (trilinear, float32, 0 outside the model grid)."""
    voxel_map = source_to_model(model_affine, source, to_baseline)
    return _sample(image, voxel_map, source.shape, 0.0).astype(np.float32)


def prob_to_source(
    prob: np.ndarray, model_affine: np.ndarray, source: Grid, to_baseline: np.ndarray
) -> np.ndarray:
    """A model-grid probability map on the source grid (trilinear, clipped to [0, 1])."""
    return np.clip(image_to_source(prob, model_affine, source, to_baseline), 0.0, 1.0)


def label_to_source(
    label: np.ndarray, model_affine: np.ndarray, source: Grid, to_baseline: np.ndarray
) -> np.ndarray:
    """A model-grid label on the source grid (uint8): each class's one-hot map trilinear, then
    the class of highest weight; background outside the model grid."""
    voxel_map = source_to_model(model_affine, source, to_baseline)
    label = np.asarray(label)
    best = np.zeros(source.shape, np.uint8)
    best_weight = _sample(label == 0, voxel_map, source.shape, 1.0)
    for value in range(1, int(label.max(initial=0)) + 1):
        if not (label == value).any():
            continue
        weight = _sample(label == value, voxel_map, source.shape, 0.0)
        wins = weight > best_weight
        best[wins], best_weight[wins] = value, weight[wins]
    return best
