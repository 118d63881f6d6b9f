"""The model grid of one patient: axis-aligned RAS, isotropic, centred on the baseline brain."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from mtlgen.io.validate import Volume


@dataclass(frozen=True)
class Grid:
    """Shape and voxel -> world (RAS mm, baseline scanner space) affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def to_json(self) -> str:
        return json.dumps({"shape": list(self.shape), "affine": self.affine.tolist()})

    @classmethod
    def from_json(cls, text: str) -> Grid:
        tree = json.loads(text)
        return cls(tuple(tree["shape"]), np.asarray(tree["affine"], dtype=np.float64))


def brain_center(vol: Volume) -> np.ndarray:
    """World position (mm) of the centroid of the bright foreground (> 20% of the 99th pct)."""
    data = vol.data
    threshold = float(data.min()) + 0.2 * (np.percentile(data, 99) - float(data.min()))
    ijk = np.argwhere(data > threshold)
    if len(ijk) == 0:
        ijk = np.argwhere(np.ones_like(data, dtype=bool))
    centre = ijk.mean(axis=0)
    return vol.affine[:3, :3] @ centre + vol.affine[:3, 3]


def grid_around(center_mm: np.ndarray, spacing_mm: float, shape: tuple[int, int, int]) -> Grid:
    """An RAS grid of ``shape`` voxels of ``spacing_mm`` whose centre lies at ``center_mm``."""
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = np.asarray(center_mm) - spacing_mm * (np.asarray(shape) - 1) / 2.0
    return Grid(tuple(int(n) for n in shape), affine)
