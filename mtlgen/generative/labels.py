"""Label channels drawn with the image: a label change is generated as the residual of the
one-hot lesion core and edema (truth minus forecast, each voxel -1, 0 or +1), so every sample
carries its own mask and volume, and the samples disagree about growth where the generator
does. A drawn sample is turned back into a label by thresholding forecast + residual at 0.5
per class (core wins over edema)."""

from __future__ import annotations

import numpy as np

CLASSES = (1, 2)  # lesion core, edema: the label values drawn, in channel order


def one_hot(label: np.ndarray) -> np.ndarray:
    """``[2, *S]`` float32: core and edema indicators of ``label``."""
    return np.stack([label == k for k in CLASSES]).astype(np.float32)


def label_residual(truth: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    """``[2, *S]``: one-hot ``truth`` minus one-hot ``forecast``."""
    return one_hot(truth) - one_hot(forecast)


def labels_from_residuals(forecast: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """``[n, *S]`` uint8 labels from ``forecast`` ``[*S]`` and drawn ``residuals``
    ``[n, 2, *S]``: a class is present where forecast + residual exceeds 0.5."""
    if residuals.shape[1:] != (len(CLASSES), *forecast.shape):
        raise ValueError(
            f"label residuals {residuals.shape}: expected [n, {len(CLASSES)}, *{forecast.shape}]"
        )
    present = one_hot(forecast)[None] + residuals > 0.5
    labels = np.zeros((residuals.shape[0], *forecast.shape), np.uint8)
    for k in reversed(range(len(CLASSES))):  # core written last: it wins
        labels[present[:, k]] = CLASSES[k]
    return labels
