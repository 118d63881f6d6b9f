"""What every predictor of a follow-up answers, models and baselines alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mtlgen.io.series import VisitArrays
from mtlgen.progression import Status


@dataclass(frozen=True)
class Prediction:
    """A predicted target visit on the model grid (the context's grid).

    A generative predictor also gives its ``samples`` (contrast -> ``[n, *S]``; ``images`` is
    then their mean), each sample's segmentation summed up as ``lesion_prob`` (the share of
    samples with lesion, core or edema, at each voxel), each sample's lesion-core volume
    (``volume_samples_ml``) and the share of samples in each progression status
    (``status_probs``); ``label``, ``core_volume_ml`` and ``status`` stay the point forecast.
    """

    images: dict[str, np.ndarray]  # contrast -> predicted normalised image
    label: np.ndarray  # uint8: 0 background, 1 lesion core, 2 edema
    core_volume_ml: float
    status: Status
    samples: dict[str, np.ndarray] | None = None
    lesion_prob: np.ndarray | None = None
    volume_samples_ml: np.ndarray | None = None
    status_probs: dict[str, float] | None = None


class Predictor(Protocol):
    """Predicts the visit at ``target_days`` from context visits ordered by time."""

    name: str

    def predict(self, context: Sequence[VisitArrays], target_days: float) -> Prediction: ...
