"""Intensity harmonisation that no lesion can move: every scale is taken on normal tissue.

Three steps, all on the model grid:

1. ``scale_on_tissue`` (every scan): the background level (a low percentile of the field of
   view) maps to 0 and the median of the head (the Otsu foreground inside the field of view)
   maps to ``tissue_value``. A median moves little when a lesion grows: a bright FLAIR lesion of
   120 mL in a 1.5 L head shifts it by a few percent, where the 99th percentile it replaces
   follows the lesion itself (normal FLAIR tissue fell from 0.84 to 0.58 within one patient).
2. ``match_reference`` (every follow-up): the follow-up, already on its baseline's grid, is
   scaled by the robust ratio of its intensities to the baseline's over the voxels that are
   head in both, trimmed of those that changed (the lesion, its edema, resection): a median
   ratio, then ``rounds`` times the median over the voxels within ``trim`` robust standard
   deviations of that fit. Normal tissue then keeps its baseline intensity within about 1%
   across visits, whatever the lesion does (``tests/test_intensity.py``).
3. ``match_bias_field`` (every follow-up, when ``preprocess.intensity_bias_sigma_mm`` > 0): the
   differential bias correction of longitudinal MR (Lewis & Fox, 2004). Each acquisition has its
   own smooth multiplicative bias field; the follow-up is divided by the smooth part of its
   log-ratio to the baseline, fitted by normalised Gaussian convolution over the same trimmed
   normal tissue. A lesion's change is local and far from the fit, so it is trimmed and kept;
   what differs smoothly between two scans of one head (coil, shim, scanner) is removed, so a
   follow-up and its forecast are compared on the baseline's field. At 15 mm this removed a
   quarter (demo) to a third (stress cohort) of copy-last's whole-brain image error between
   consecutive visits, and 2-3% of it in the voxels whose label changes (``bench/bias_field.py``,
   docs/registration.md).

Why not a tissue-mode method (White Stripe, the KDE mode of ``intensity-normalization``): on
the synthetic patients their T1 "last mode" jumped between the grey- and white-matter peaks, by
up to 25% between visits of one patient, and their 80-point density grid quantises the mode by
about 2% of the intensity range (measured with intensity-normalization 3.0.1; docs/registration.md).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

_MIN_VOXELS = 100  # a ratio from fewer voxels than this is not trusted
_MIN_WEIGHT = 1e-3  # a smoothed weight below this: no normal tissue within reach


def foreground(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The head: voxels inside the field of view above Otsu's threshold of those voxels."""
    if not inside.any():
        return inside.copy()
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    otsu.SetMaskValue(1)
    otsu.Execute(
        sitk.GetImageFromArray(np.ascontiguousarray(values, dtype=np.float32)),
        sitk.GetImageFromArray(inside.astype(np.uint8)),
    )
    return inside & (values > otsu.GetThreshold())


def scale_on_tissue(
    values: np.ndarray, inside: np.ndarray, floor_percentile: float, tissue_value: float
) -> np.ndarray:
    """``values`` with the ``floor_percentile`` of the field of view at 0 and the head's median
    at ``tissue_value`` (float32; 0 outside the field of view; no clipping)."""
    if not inside.any():
        return np.zeros_like(values, dtype=np.float32)
    floor = float(np.percentile(values[inside], floor_percentile))
    head = foreground(values, inside)
    level = float(np.median(values[head])) - floor if head.any() else 0.0
    out = (values - floor) * (tissue_value / level if level > 0 else 1.0)
    out[~inside] = 0.0
    return out.astype(np.float32)


def match_reference(
    image: np.ndarray,
    reference: np.ndarray,
    mask: np.ndarray,
    trim: float = 2.5,
    rounds: int = 3,
) -> tuple[np.ndarray, float]:
    """``image`` divided by its robust intensity ratio to ``reference`` over ``mask`` (voxels
    that are head in both), and that ratio. The ratio is 1 (nothing changes) when too few
    voxels support it."""
    keep = mask & (image > 0) & (reference > 0)
    if keep.sum() < _MIN_VOXELS:
        return image, 1.0
    ratio = float(np.median(image[keep] / reference[keep]))
    for _ in range(rounds):
        residual = np.abs(image - ratio * reference)
        spread = 1.4826 * float(np.median(residual[keep]))
        normal = keep & (residual <= trim * spread)
        if spread == 0 or normal.sum() < _MIN_VOXELS:
            break
        ratio = float(np.median(image[normal] / reference[normal]))
    if not ratio > 0:
        return image, 1.0
    return (image / ratio).astype(np.float32), ratio


def _smooth_within(values: np.ndarray, weight: np.ndarray, sigma_vox: np.ndarray) -> np.ndarray:
    """Normalised Gaussian convolution: the weighted local mean of ``values`` (0 where no weight
    lies within reach)."""
    num = ndimage.gaussian_filter(values * weight, sigma_vox, mode="constant")
    den = ndimage.gaussian_filter(weight.astype(np.float64), sigma_vox, mode="constant")
    return np.where(den > _MIN_WEIGHT, num / np.maximum(den, _MIN_WEIGHT), 0.0)


def match_bias_field(
    image: np.ndarray,
    reference: np.ndarray,
    mask: np.ndarray,
    sigma_mm: float,
    spacing_mm: tuple[float, float, float],
    trim: float = 2.5,
    rounds: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` divided by the smooth multiplicative field that separates it from
    ``reference`` over ``mask`` (voxels that are head in both), and that field. The field is
    the Gaussian (``sigma_mm`` on voxels of ``spacing_mm``) weighted mean of the log-ratio over
    the voxels within ``trim`` robust standard deviations of the previous round's field (what
    changed, a lesion, drops out); 1 where no such voxel is within reach. Unchanged when too few
    voxels support it."""
    keep = mask & (image > 0) & (reference > 0)
    if keep.sum() < _MIN_VOXELS:
        return image, np.ones_like(image, dtype=np.float32)
    sigma = sigma_mm / np.asarray(spacing_mm, dtype=np.float64)
    log_ratio = np.zeros(image.shape, dtype=np.float64)
    log_ratio[keep] = np.log(image[keep].astype(np.float64) / reference[keep])
    normal = keep
    for _ in range(rounds):
        residual = np.abs(log_ratio - _smooth_within(log_ratio, normal, sigma))
        spread = 1.4826 * float(np.median(residual[keep]))
        trimmed = keep & (residual <= trim * spread)
        if spread == 0 or trimmed.sum() < _MIN_VOXELS:
            break
        normal = trimmed
    field = np.exp(_smooth_within(log_ratio, normal, sigma))
    return (image / field).astype(np.float32), field.astype(np.float32)
