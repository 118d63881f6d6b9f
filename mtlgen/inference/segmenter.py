"""The image-only segmentation peer as a ``Predictor``: it answers only segmentation cases
(the target is a context visit whose label is hidden), from that visit's images alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mtlgen.data.visits import visit_channels
from mtlgen.inference.prediction import Prediction
from mtlgen.io.series import VisitArrays
from mtlgen.models.segmenter import ImageSegmenter
from mtlgen.progression import lesion_volumes_ml, voxel_volume_ml


class SegmenterPredictor:
    """Segments the target visit with a trained ``ImageSegmenter``."""

    segments, segments_only = True, True  # ``mtlgen.evaluate.cases.answers``

    def __init__(self, model: ImageSegmenter, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.name = "image-only-unet"

    @torch.no_grad()
    def predict(self, context: Sequence[VisitArrays], target_days: float) -> Prediction:
        visit = next((v for v in context if v.days == target_days), None)
        if visit is None:
            raise ValueError(
                f"the image-only segmenter segments an observed visit: no context visit on day "
                f"{target_days}"
            )
        image = torch.from_numpy(visit_channels(visit, self.model.contrasts))[None]
        logits = self.model(image.to(self.device))
        label = logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
        core_ml, _ = lesion_volumes_ml(label, voxel_volume_ml(visit.affine))
        return Prediction(images={}, label=label, core_volume_ml=float(core_ml), status="stable")
