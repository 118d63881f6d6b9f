"""Images that fall back towards copy-last where the model cannot tell.

A model's predicted image is answered as ``copy_last + w * (model - copy_last)``: the model's
change from the scan it starts from, shrunk by a weight ``w`` in [0, 1] per case group (case
kind x one or several context visits, as the volume intervals), region (``near``: within
``near_mm`` of the reference lesion, where the lesion grows, shrinks and pushes; ``far``: the
rest) and contrast. The weights are fitted after training on the validation patients' cases
(``mtlgen.evaluate.calibration.calibrate_checkpoint``): each is the grid value with the least
absolute error over the brain, so where the model's change did not beat copy-last on held-out
patients it is not answered (w = 0), where it did it is kept (w = 1), and in between shrunk.
A group without validation cases borrows its kind's weights, then every kind's; a model without
a fallback (``fallback.json``) answers its image unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from mtlgen.inference.intervals import ALL, group_of
from mtlgen.io.atomic import write_text_atomic

FALLBACK_FILE = "fallback.json"  # beside a checkpoint's weights
GRID = tuple(round(0.05 * i, 2) for i in range(21))  # the weights a fit chooses from
REGIONS = ("near", "far")


def near_lesion(label: np.ndarray, spacing_mm: Sequence[float], near_mm: float) -> np.ndarray:
    """Voxels within ``near_mm`` of the lesion (core or edema) of ``label``; none without one."""
    lesion = np.asarray(label) > 0
    if not lesion.any():
        return np.zeros(lesion.shape, bool)
    return ndimage.distance_transform_edt(~lesion, sampling=spacing_mm) <= near_mm


@dataclass
class FallbackErrors:
    """Absolute errors of every grid weight, summed per group, region and contrast over the
    brain voxels of calibration cases: what ``ImageFallback.fit`` chooses from."""

    sums: dict[tuple[str, str, str], np.ndarray] = field(default_factory=dict)

    def add(
        self,
        group: str,
        contrast: str,
        model: np.ndarray,
        copy_last: np.ndarray,
        truth: np.ndarray,
        near: np.ndarray,
        brain: np.ndarray,
    ) -> None:
        """One case's contrast: ``model``, ``copy_last`` and ``truth`` images, the ``near``
        region and the ``brain`` to score over."""
        change = (model - copy_last).astype(np.float64)
        base = (copy_last - truth).astype(np.float64)
        for region, mask in (("near", near & brain), ("far", ~near & brain)):
            if not mask.any():
                continue
            d, b = change[mask], base[mask]
            errors = np.array([np.abs(b + w * d).sum() for w in GRID])
            for key in ((group, region, contrast), (group.split(":")[0], region, contrast)):
                self.sums[key] = self.sums.get(key, 0.0) + errors
            key = (ALL, region, contrast)
            self.sums[key] = self.sums.get(key, 0.0) + errors


@dataclass(frozen=True)
class ImageFallback:
    """Weights of the model's change from copy-last: ``{group: {region: {contrast: w}}}``
    (groups: ``<kind>:1`` / ``<kind>:2+``, a kind, or ``all``), and the ``near`` distance."""

    weights: Mapping[str, Mapping[str, Mapping[str, float]]]
    near_mm: float

    @classmethod
    def fit(cls, errors: FallbackErrors, near_mm: float) -> ImageFallback:
        """The least-error grid weight of every group, region and contrast with cases."""
        weights: dict = {}
        for (group, region, contrast), sums in sorted(errors.sums.items()):
            w = GRID[int(np.argmin(sums))]
            weights.setdefault(group, {}).setdefault(region, {})[contrast] = w
        return cls(weights, near_mm)

    def weight(self, kind: str, context_visits: int, region: str, contrast: str) -> float:
        """The weight of a case's region and contrast: its group's, else its kind's, else that
        of all cases; 1 (the model's image) when none was fitted."""
        for group in (group_of(kind, context_visits), kind, ALL):
            w = self.weights.get(group, {}).get(region, {}).get(contrast)
            if w is not None:
                return float(w)
        return 1.0

    def apply(
        self,
        kind: str,
        context_visits: int,
        model: Mapping[str, np.ndarray],
        copy_last: Mapping[str, np.ndarray],
        near: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """``copy_last + w (model - copy_last)`` per contrast, w by region (``near`` mask)."""
        out = {}
        for contrast, image in model.items():
            w_near, w_far = (
                self.weight(kind, context_visits, region, contrast) for region in REGIONS
            )
            w = np.where(near, w_near, w_far).astype(image.dtype)
            out[contrast] = copy_last[contrast] + w * (image - copy_last[contrast])
        return out

    def save(self, directory: Path | str) -> Path:
        record = {"near_mm": self.near_mm, "grid": list(GRID), "weights": self.weights}
        return write_text_atomic(Path(directory) / FALLBACK_FILE, json.dumps(record, indent=2))


def load_fallback(directory: Path | str) -> ImageFallback | None:
    """The checkpoint's image fallback, None if it has none."""
    path = Path(directory) / FALLBACK_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return ImageFallback(record["weights"], float(record["near_mm"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not an image fallback ({exc})") from None
