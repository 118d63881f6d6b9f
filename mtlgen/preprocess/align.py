"""Rigid alignment of a follow-up to its baseline: SimpleITK, Mattes mutual information,
multi-resolution gradient descent on a 3-D Euler transform.

The fixed image is the baseline's reference contrast on the model grid; the moving image is the
follow-up's raw scan. The result maps follow-up world (RAS mm) to baseline world (RAS mm), the
same convention as the synthetic ground truth's ``to_baseline``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from mtlgen.config import PreprocessConfig
from mtlgen.io.validate import Volume
from mtlgen.preprocess.grid import Grid

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


class AlignmentFailed(ValueError):
    """SimpleITK could not register the pair (e.g. a follow-up too small to smooth or sample)."""


@dataclass(frozen=True)
class Alignment:
    """``to_baseline``: 4x4, follow-up world -> baseline world (RAS mm); ``mi``: final Mattes
    mutual information (nats, higher is better)."""

    to_baseline: np.ndarray
    mi: float


def to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image (LPS physical space) of a float array with an orthogonal RAS affine."""
    lps = _RAS_TO_LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    return image


def _euler_to_ras(euler: sitk.Euler3DTransform) -> np.ndarray:
    """The ITK transform maps baseline (fixed) points to follow-up (moving) points in LPS; return
    its inverse in RAS."""
    rot = np.asarray(euler.GetMatrix()).reshape(3, 3)
    center, shift = np.asarray(euler.GetCenter()), np.asarray(euler.GetTranslation())
    fixed_to_moving = np.eye(4)
    fixed_to_moving[:3, :3] = rot
    fixed_to_moving[:3, 3] = center + shift - rot @ center
    return _RAS_TO_LPS @ np.linalg.inv(fixed_to_moving) @ _RAS_TO_LPS


def _coarsen(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Smooth and resample ``image`` (in its own orientation) to voxels no finer than
    ``spacing_mm``: the fine detail cannot improve a fit at the model grid, only slow it down."""
    spacing = np.asarray(image.GetSpacing())
    if spacing.min() >= spacing_mm:
        return image
    target = np.maximum(spacing, spacing_mm)
    sigma = 0.5 * np.sqrt(np.maximum(target**2 - spacing**2, 0.0))
    smooth = sitk.SmoothingRecursiveGaussian(image, sigma.tolist())
    size = np.ceil(np.asarray(image.GetSize()) * spacing / target).astype(int)
    origin = image.TransformContinuousIndexToPhysicalPoint(
        (0.5 * (target / spacing) - 0.5).tolist()
    )
    return sitk.Resample(
        smooth,
        size.tolist(),
        sitk.Transform(),
        sitk.sitkLinear,
        origin,
        target.tolist(),
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def rigid_align(
    fixed: np.ndarray, grid: Grid, moving: Volume, cfg: PreprocessConfig, seed: int = 0
) -> Alignment:
    """Align ``moving`` (a raw follow-up scan) to ``fixed`` (the baseline reference on ``grid``).

    Raises ``AlignmentFailed`` (one line) when SimpleITK cannot register the pair. Reproducible
    with ``cfg.align_threads`` 1 (the default): the metric is sampled with a fixed seed, and one
    ITK thread keeps the sums in one order (threaded sums change the last bits run to run and the
    optimiser carries them into the pose); patients are registered in parallel instead
    (``flows.register``). ``bench/register.py`` measures what the single thread costs.
    """
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(cfg.align_threads)
    try:
        return _register(
            to_sitk(fixed, grid.affine), to_sitk(moving.data, moving.affine), cfg, seed
        )
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1]
        detail = re.sub(r"^ITK ERROR: \w+\(0x[0-9a-f]+\): ", "", detail)
        raise AlignmentFailed(f"rigid alignment failed: {detail}") from None


def _register(
    fixed_img: sitk.Image, moving_img: sitk.Image, cfg: PreprocessConfig, seed: int
) -> Alignment:
    moving_img = _coarsen(moving_img, cfg.spacing_mm)
    euler = sitk.Euler3DTransform()
    initial = sitk.CenteredTransformInitializer(
        fixed_img, moving_img, euler, sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    euler = sitk.Euler3DTransform(initial)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=cfg.align_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(cfg.align_sampling, seed + 1)  # ITK reads 0 as the clock
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-3,
        numberOfIterations=cfg.align_iterations,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(cfg.align_levels))
    reg.SetSmoothingSigmasPerLevel([0.5 * (f - 1) * cfg.spacing_mm for f in cfg.align_levels])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(euler, inPlace=True)
    reg.Execute(fixed_img, moving_img)
    return Alignment(_euler_to_ras(euler), float(-reg.GetMetricValue()))


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Normalised cross-correlation of ``a`` and ``b`` inside ``mask`` (1: equal up to scale)."""
    x, y = a[mask].astype(np.float64), b[mask].astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0
