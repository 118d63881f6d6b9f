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
    """A predicted target visit on the model grid (the context's grid). A generative predictor
    also gives its ``samples`` (contrast -> ``[n, *S]``); ``images`` is then their mean."""

    images: dict[str, np.ndarray]  # contrast -> predicted normalised image
    label: np.ndarray  # uint8: 0 background, 1 lesion core, 2 edema
    core_volume_ml: float
    status: Status
    samples: dict[str, np.ndarray] | None = None


class Predictor(Protocol):
    """Predicts the visit at ``target_days`` from context visits ordered by time."""

    name: str

    def predict(self, context: Sequence[VisitArrays], target_days: float) -> Prediction: ...
