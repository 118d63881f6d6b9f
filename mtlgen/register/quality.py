"""The quality gate: scans that are valid files but implausible as what they claim to be.

An image that does not look like a head, or a follow-up whose alignment to its baseline is far
below what any real pair reaches, is registered as ``needs_review`` (with the reason returned
here) and kept out of training and prediction until a person settles it. Thresholds are absolute
(``registry.*`` in params.yaml) and loose: real pairs reach NCC ~0.99 and Mattes MI ~1.3, noise
~0.00.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mtlgen.config import RegistryConfig
from mtlgen.io.validate import Volume
from mtlgen.preprocess.intensity import foreground


def head_problem(vol: Volume, reg: RegistryConfig) -> str | None:
    """Why ``vol`` does not look like a head scan, or None: its Otsu foreground covers a
    plausible fraction of the field of view, neighbouring voxels are correlated (anatomy, not
    noise) and the largest foreground piece spans ``head_min_extent_mm`` on every axis."""
    data = np.asarray(vol.data, dtype=np.float32)
    head = foreground(data, np.ones(data.shape, dtype=bool))
    fraction = float(head.mean())
    lo, hi = reg.head_foreground_range
    if not lo <= fraction <= hi:
        return (
            f"does not look like a head scan: foreground {fraction:.1%} of the field of view "
            f"(expected {lo:.0%}-{hi:.0%}, registry.head_foreground_range)"
        )
    coherence = neighbour_correlation(data)
    if coherence < reg.head_min_coherence:
        return (
            f"does not look like a head scan: neighbouring voxels correlate {coherence:.2f} "
            f"(expected >= {reg.head_min_coherence:g}, registry.head_min_coherence): noise?"
        )
    extent = _largest_extent_mm(head, vol.spacing)
    if extent < reg.head_min_extent_mm:
        return (
            f"does not look like a head scan: largest foreground piece {extent:.0f} mm across "
            f"(expected >= {reg.head_min_extent_mm:g} mm, registry.head_min_extent_mm)"
        )
    return None


def neighbour_correlation(data: np.ndarray) -> float:
    """Mean over the three axes of the correlation of each voxel with its next neighbour."""
    values = []
    for axis in range(3):
        n = data.shape[axis]
        a = np.take(data, range(n - 1), axis=axis).ravel()
        b = np.take(data, range(1, n), axis=axis).ravel()
        if a.std() == 0 or b.std() == 0:
            values.append(0.0)
        else:
            values.append(float(np.corrcoef(a, b)[0, 1]))
    return float(np.mean(values))


def _largest_extent_mm(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """The smallest side (mm) of the bounding box of the largest connected piece of ``mask``."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return 0.0
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    box = ndimage.find_objects((labels == largest).astype(np.int8))[0]
    return float(min((s.stop - s.start) * d for s, d in zip(box, spacing, strict=True)))


def alignment_problem(ncc: float | None, mi: float | None, reg: RegistryConfig) -> str | None:
    """Why a follow-up's alignment to its baseline is implausible, or None."""
    low = []
    if ncc is not None and ncc < reg.review_min_ncc:
        low.append(f"NCC {ncc:.3f} < registry.review_min_ncc {reg.review_min_ncc:g}")
    if mi is not None and mi < reg.review_min_mi:
        low.append(f"Mattes MI {mi:.3f} < registry.review_min_mi {reg.review_min_mi:g}")
    if not low:
        return None
    return "implausible similarity to the baseline after alignment: " + ", ".join(low)
