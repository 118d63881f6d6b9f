"""Real adult brain anatomy: the MNI ICBM152 2009 T1/GM/WM templates shipped in nilearn's wheel.

Read straight from the installed package (no download). Tissue maps are pre-filtered once per
output spacing and then sampled at arbitrary world points, so every patient visit is rendered
from the real anatomy without a second interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
CHANNELS = ("t1", "gm", "wm", "csf")


def template_path(name: str) -> Path:
    """Path of a shipped MNI template inside the installed nilearn package."""
    root = resources.files("nilearn.datasets") / "data"
    path = Path(str(root / TEMPLATE_FILES[name]))
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: MNI template not found in the installed nilearn package "
            "(expected nilearn>=0.14 which ships it under nilearn/datasets/data)"
        )
    return path


def sample_volume(volume: torch.Tensor, world_to_voxel: np.ndarray, points: torch.Tensor):
    """Trilinearly sample ``volume`` [C, I, J, K] at world ``points`` [N, 3] (mm) -> [C, N].

    Points outside the volume read as 0.
    """
    lin = torch.as_tensor(world_to_voxel[:3, :3], dtype=points.dtype)
    off = torch.as_tensor(world_to_voxel[:3, 3], dtype=points.dtype)
    idx = points @ lin.T + off
    size = torch.tensor(volume.shape[1:], dtype=points.dtype)
    norm = 2.0 * idx / (size - 1) - 1.0
    grid = norm.flip(-1).view(1, 1, 1, -1, 3)  # grid_sample wants (k, j, i) order
    out = torch.nn.functional.grid_sample(
        volume.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out.view(volume.shape[0], -1)


@dataclass(frozen=True)
class Anatomy:
    """Pre-filtered tissue maps on the 1 mm template grid, plus landmarks used by the synthesiser.

    ``maps`` holds channels ``CHANNELS`` scaled to [0, 1]; ``affine`` is the template's
    voxel-to-world matrix (RAS mm).
    """

    maps: torch.Tensor
    affine: np.ndarray
    brain_center: np.ndarray
    brain_box: np.ndarray  # [2, 3] world min/max corner of the brain
    ventricle_centers: np.ndarray
    deep_wm_points: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.maps.shape[1:])

    @property
    def world_to_voxel(self) -> np.ndarray:
        return np.linalg.inv(self.affine)

    def sample(self, points: torch.Tensor) -> torch.Tensor:
        """Tissue channels at world points [N, 3] -> [4, N]."""
        return sample_volume(self.maps, self.world_to_voxel, points)

    def grid(self, voxel_mm: tuple[float, float, float]) -> tuple[tuple[int, int, int], np.ndarray]:
        """An axis-aligned RAS grid of ``voxel_mm`` voxels covering the template's field of
        view."""
        extent = np.array(self.shape, dtype=float)
        spacing = np.asarray(voxel_mm, dtype=float)
        shape = tuple(int(n) for n in np.ceil(extent / spacing))
        affine = np.diag([*spacing, 1.0])
        first_center = self.affine[:3, 3] + (spacing - 1.0) / 2.0
        affine[:3, 3] = first_center
        return shape, affine


@lru_cache(maxsize=4)
def load_anatomy(voxel_mm: tuple[float, float, float]) -> Anatomy:
    """Load the templates and anti-alias them for rendering with ``voxel_mm`` voxels."""
    images = {name: nib.load(template_path(name)) for name in TEMPLATE_FILES}
    affine = images["t1"].affine
    t1, gm, wm = (np.asarray(images[n].dataobj, dtype=np.float32) / 255.0 for n in TEMPLATE_FILES)
    brain = t1 > 0.02
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)
    stack = np.stack([t1, gm, wm, csf])
    sigma = [0.4 * max(s - 1.0, 0.0) for s in voxel_mm]  # the template's voxels are 1 mm
    if max(sigma) > 0:
        stack = np.stack([ndimage.gaussian_filter(c, sigma) for c in stack])

    depth = ndimage.distance_transform_edt(brain)  # mm, template is 1 mm isotropic
    brain_ijk = np.argwhere(brain)
    brain_center = nib.affines.apply_affine(affine, brain_ijk.mean(axis=0))
    brain_box = nib.affines.apply_affine(affine, np.stack([brain_ijk.min(0), brain_ijk.max(0)]))

    deep_csf = (csf > 0.8) & (depth > 25)
    ventricles = []
    for side in (-1, 1):
        ijk = np.argwhere(deep_csf)
        xyz = nib.affines.apply_affine(affine, ijk)
        on_side = xyz[np.sign(xyz[:, 0] - brain_center[0]) == side]
        ventricles.append(on_side.mean(axis=0))

    deep_wm = np.argwhere((wm > 0.8) & (depth > 28))
    deep_wm_points = nib.affines.apply_affine(affine, deep_wm[::7]).astype(np.float32)
    return Anatomy(
        maps=torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32)),
        affine=affine,
        brain_center=brain_center,
        brain_box=brain_box,
        ventricle_centers=np.stack(ventricles),
        deep_wm_points=deep_wm_points,
    )
