"""Model-grid volumes mapped onto a source scan's grid (LPS, anisotropic, rotated to baseline)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mtlgen.inference.outputs import OutputGrid, write_prediction
from mtlgen.inference.prediction import Prediction
from mtlgen.io.validate import Volume
from mtlgen.preprocess.grid import Grid, grid_around
from mtlgen.preprocess.native import (
    image_to_source,
    label_to_source,
    prob_to_source,
    source_to_model,
)
from mtlgen.preprocess.resample import resample_to_grid

MODEL = grid_around(np.array([2.0, -5.0, 10.0]), 3.0, (24, 28, 24))


def _rotation(degrees: float, shift: tuple[float, float, float]) -> np.ndarray:
    """A rigid map: rotation about z and x, then a shift (mm)."""
    a, b = np.radians(degrees), np.radians(degrees / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rz @ rx, shift
    return out


TO_BASELINE = _rotation(12.0, (3.0, -4.0, 2.5))


def _lps_source() -> Grid:
    """An LPS grid of 1.2 x 1.2 x 2.5 mm voxels whose centre maps onto the model grid's."""
    shape = (64, 74, 30)
    affine = np.diag([-1.2, -1.2, 2.5, 1.0])
    centre_model = MODEL.affine[:3, :3] @ ((np.array(MODEL.shape) - 1) / 2) + MODEL.affine[:3, 3]
    centre_source = np.linalg.inv(TO_BASELINE) @ np.append(centre_model, 1.0)
    affine[:3, 3] = centre_source[:3] - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return Grid(shape, affine)


def _world(grid_affine: np.ndarray, shape) -> np.ndarray:
    """World coordinates [3, *shape] of every voxel."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return (grid_affine[:3, :3] @ ijk + grid_affine[:3, 3:]).reshape(3, *shape)


def _ramp(world: np.ndarray) -> np.ndarray:
    return 0.01 * world[0] - 0.02 * world[1] + 0.03 * world[2] + 1.0


def _inside(source: Grid, margin: float) -> np.ndarray:
    """Source voxels whose model-grid position lies at least ``margin`` voxels inside it."""
    ijk = np.indices(source.shape, dtype=np.float64).reshape(3, -1)
    voxel_map = source_to_model(MODEL.affine, source, TO_BASELINE)
    pos = voxel_map[:3, :3] @ ijk + voxel_map[:3, 3:]
    upper = np.array(MODEL.shape)[:, None] - 1 - margin
    return np.all((pos >= margin) & (pos <= upper), axis=0).reshape(source.shape)


def test_a_ramp_maps_onto_the_source_grid_and_back():
    source = _lps_source()
    model_ramp = _ramp(_world(MODEL.affine, MODEL.shape)).astype(np.float32)
    native = image_to_source(model_ramp, MODEL.affine, source, TO_BASELINE)
    assert native.dtype == np.float32 and native.shape == source.shape
    truth = _ramp(_world(TO_BASELINE @ source.affine, source.shape))  # in the baseline's world
    inside = _inside(source, 0.01)
    assert inside.mean() > 0.3
    assert np.abs(native - truth)[inside].max() < 1e-3  # trilinear is exact on a ramp
    assert np.all(native[~_inside(source, -1.0)] == 0)  # outside the model grid: 0
    # back onto the model grid the way registration resamples a source scan
    back, covered = resample_to_grid(Volume(native, source.affine), MODEL, TO_BASELINE, order=1)
    deep = covered & (np.abs(back) > 0)
    assert np.abs(back - model_ramp)[deep & _model_core()].max() < 2e-2


def _model_core() -> np.ndarray:
    core = np.zeros(MODEL.shape, bool)
    core[6:-6, 6:-6, 6:-6] = True
    return core


def test_a_block_label_keeps_its_volume_and_probabilities_stay_in_range():
    source = _lps_source()
    label = np.zeros(MODEL.shape, np.uint8)
    label[5:19, 6:22, 5:19] = 2  # a 42 x 48 x 42 mm lesion, a 2-voxel edema shell around its core
    label[7:17, 8:20, 7:17] = 1
    native = label_to_source(label, MODEL.affine, source, TO_BASELINE)
    assert native.dtype == np.uint8 and set(np.unique(native)) == {0, 1, 2}
    model_ml, native_ml = 27.0e-3, float(np.prod([1.2, 1.2, 2.5])) * 1e-3
    for value in (1, 2):
        expected = (label == value).sum() * model_ml
        assert (native == value).sum() * native_ml == pytest.approx(expected, rel=0.03)
    prob = prob_to_source((label > 0) * 1.5 - 0.2, MODEL.affine, source, TO_BASELINE)
    assert prob.min() >= 0.0 and prob.max() <= 1.0


def test_written_files_carry_the_source_affine_shape_orientation_and_dtypes(tmp_path):
    source = _lps_source()
    label = np.zeros(MODEL.shape, np.uint8)
    label[8:16, 9:19, 8:15] = 1
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(3, *MODEL.shape)).astype(np.float32)
    pred = Prediction(
        images={"FLAIR": samples.mean(0)},
        label=label,
        core_volume_ml=1.0,
        status="stable",
        samples={"FLAIR": samples},
        lesion_prob=(label > 0).astype(np.float32),
    )
    grid = OutputGrid("native", source, MODEL.affine, TO_BASELINE)
    written = write_prediction(pred, grid, tmp_path)
    assert set(written) == {"FLAIR", "FLAIR_std", "label", "lesion_prob"}
    for name, dtype in (("FLAIR", "float32"), ("FLAIR_std", "float32"), ("label", "uint8")):
        img = nib.load(tmp_path / f"{name}.nii.gz")
        assert np.allclose(img.affine, source.affine, atol=1e-5) and img.shape == source.shape
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        assert img.get_data_dtype() == np.dtype(dtype)
