"""The continuous ranked probability score of samples, the proper score a generator is fitted
and judged by: voxel-wise, with the fair ensemble estimator (``scoringrules``), unbiased for a
handful of draws. A single draw (a deterministic forecast) scores its absolute error."""

from __future__ import annotations

import numpy as np
import scoringrules


def ensemble_crps(draws: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """CRPS per voxel of ``draws`` ``[n, *S]`` against ``truth`` ``[*S]``."""
    if draws.shape[1:] != truth.shape:
        raise ValueError(f"draws {draws.shape} do not match truth {truth.shape}")
    if draws.shape[0] == 1:
        return np.abs(draws[0] - truth)
    flat = np.moveaxis(draws.reshape(draws.shape[0], -1), 0, -1)
    return np.asarray(
        scoringrules.crps_ensemble(truth.reshape(-1), flat, estimator="fair")
    ).reshape(truth.shape)
