"""Model-grid resampling, intensity normalisation, the RAS<->ITK convention and rigid alignment."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from mtlgen.config import ConfigError, PreprocessConfig, load_config
from mtlgen.io.validate import Volume, read_volume
from mtlgen.preprocess.align import rigid_align, to_sitk
from mtlgen.preprocess.grid import Grid, brain_center, grid_around
from mtlgen.preprocess.intensity import scale_on_tissue
from mtlgen.preprocess.resample import resample_to_grid


def test_grid_is_centred_ras_and_isotropic():
    grid = grid_around(np.array([10.0, -20.0, 5.0]), 3.0, (56, 64, 56))
    centre = grid.affine @ np.r_[(np.array(grid.shape) - 1) / 2, 1]
    np.testing.assert_allclose(centre[:3], [10, -20, 5])
    np.testing.assert_allclose(np.diag(grid.affine)[:3], 3.0)
    assert Grid.from_json(grid.to_json()).shape == grid.shape


def test_resample_onto_own_grid_is_identity_and_marks_the_field_of_view():
    rng = np.random.default_rng(0)
    vol = Volume(rng.random((8, 9, 10)).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    same, inside = resample_to_grid(vol, Grid((8, 9, 10), vol.affine), np.eye(4), order=1)
    np.testing.assert_allclose(same, vol.data, atol=1e-6)
    assert inside.all()
    shifted = vol.affine.copy()
    shifted[0, 3] = 8.0  # 4 voxels along x: the last 4 x-planes fall outside the scan
    moved, inside = resample_to_grid(vol, Grid((8, 9, 10), shifted), np.eye(4), order=0)
    assert inside[:4].all() and not inside[4:].any()
    np.testing.assert_array_equal(moved[:4], vol.data[4:])
    assert (moved[4:] == 0).all()


def test_sitk_image_has_the_nifti_geometry_in_lps():
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [10, -5, 20], degrees=True).as_matrix() @ np.diag(
        [2.0, 3.0, 4.0]
    )
    affine[:3, 3] = [5, -7, 11]
    image = to_sitk(np.zeros((4, 5, 6), np.float32), affine)
    for ijk in ([0, 0, 0], [3, 4, 5], [1, 2, 3]):
        ras = affine @ np.r_[ijk, 1]
        lps = image.TransformIndexToPhysicalPoint([int(i) for i in ijk])
        np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-9)
    assert image.GetSize() == (4, 5, 6) and isinstance(image, sitk.Image)


def test_rigid_align_recovers_a_known_pose(motion_cohort):
    """Move the baseline by a known rigid transform; alignment must find it."""
    cfg = PreprocessConfig()
    base = read_volume((motion_cohort / "sub-002/ses-01/anat/sub-002_ses-01_T1w.nii.gz",))
    grid = grid_around(brain_center(base), cfg.spacing_mm, cfg.shape)
    values, inside = resample_to_grid(base, grid, np.eye(4), order=1)
    fixed = scale_on_tissue(
        values, inside, cfg.intensity_floor_percentile, cfg.intensity_tissue_value
    )
    truth = np.eye(4)  # follow-up world -> baseline world
    truth[:3, :3] = Rotation.from_euler("xyz", [6, -4, 5], degrees=True).as_matrix()
    truth[:3, 3] = [4.0, -6.0, 3.0]
    followup = Volume(base.data, np.linalg.inv(truth) @ base.affine)  # same head, moved
    found = rigid_align(fixed, grid, followup, cfg)
    err = np.linalg.inv(found.to_baseline) @ truth
    angle = np.degrees(Rotation.from_matrix(err[:3, :3]).magnitude())
    print(
        f"known pose: rotation error {angle:.3f} deg, translation error "
        f"{np.linalg.norm(err[:3, 3]):.3f} mm, MI {found.mi:.3f}"
    )
    assert angle < 1.0 and np.linalg.norm(err[:3, 3]) < 1.5 and found.mi > 0.5


def test_preprocess_settings_are_validated():
    with pytest.raises(ConfigError, match=r"preprocess.*multiples of 8"):
        load_config(None, ["preprocess.shape=[56,60,56]"])
    with pytest.raises(ConfigError, match="align_levels"):
        load_config(None, ["preprocess.align_levels=[1,2]"])
    with pytest.raises(ConfigError, match=r"registry.*spacing_range_mm"):
        load_config(None, ["registry.spacing_range_mm=[5,1]"])
