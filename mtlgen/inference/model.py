"""Checkpoint -> ``Predictor`` (the protocol of ``mtlgen.inference.prediction``).

A multi-task checkpoint answers every field from its heads: the future mask is the network's
``future_label`` (the future-segmentation head's map sized by the progression head's volumes,
``mtlgen.models.priors.sized_label``); the image is the image head's output, composed from that
same label in the network (training sees the same composition); volume and status come from
the progression head (status by the volumetric rule against the reference visit).

A single-task checkpoint answers its own task and falls back to copy-last for the others
(the latest context visit at or before the target: its image per contrast, its mask and
core volume); its ``name`` says so, e.g. ``single-image-copy-last``.

When the target is a context visit whose mask is not given (segmenting the current scan), a
model with the ``seg`` head answers mask and volume from that head.

``calibration`` is the checkpoint's volume-interval calibration (``calibration.json``, written
after training by ``mtlgen.evaluate.calibration.calibrate_checkpoint``), None if it has none;
``fallback`` (``fallback.json``, written with it) shrinks the predicted image's change from
copy-last where it did not beat copy-last on the validation patients
(``mtlgen.inference.fallback``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtlgen.data.dataset import encode_context, reference_slot
from mtlgen.inference.fallback import ImageFallback, load_fallback, near_lesion
from mtlgen.inference.generative import (
    BASE,
    GenerativePredictor,
    is_generator,
    load_generator,
)
from mtlgen.inference.intervals import VolumeCalibration, load_calibration
from mtlgen.inference.prediction import Prediction, Predictor
from mtlgen.inference.segmenter import SegmenterPredictor
from mtlgen.io.series import VisitArrays
from mtlgen.models.hub import read_meta
from mtlgen.models.mtl_net import TASKS, MultiTaskNet, reference_image
from mtlgen.models.segmenter import ImageSegmenter
from mtlgen.progression import (
    lesion_volumes_ml,
    progression_status,
    voxel_spacing_mm,
    voxel_volume_ml,
)

log = logging.getLogger(__name__)


def _by_contrast(
    images: torch.Tensor, contrasts: Sequence[str], seen: np.ndarray
) -> dict[str, np.ndarray]:
    """[1, C, *S] -> {contrast: float32 volume} of the contrasts the context has."""
    return {c: images[0, i].float().cpu().numpy() for i, c in enumerate(contrasts) if seen[i]}


class ModelPredictor:
    """Predicts a target visit with a trained ``MultiTaskNet``."""

    def __init__(
        self,
        model: MultiTaskNet,
        device: str = "cpu",
        calibration: VolumeCalibration | None = None,
        fallback: ImageFallback | None = None,
    ) -> None:
        if model.spatial_dims != 3:
            raise ValueError("the predictor answers whole volumes: it needs a spatial_dims=3 model")
        self.model = model.to(device).eval()
        self.device = device
        self.contrasts = list(model.contrasts)
        self.calibration = calibration
        self.fallback = fallback
        self.segments = "seg" in model.tasks  # it answers a visit whose label is hidden
        self.increase, self.decrease = model.increase, model.decrease  # the status rule
        tasks = model.tasks
        self.name = f"mtl-{model.sharing}" if tasks == TASKS else f"single-{tasks[0]}-copy-last"

    @torch.no_grad()
    def predict(self, context: Sequence[VisitArrays], target_days: float) -> Prediction:
        context = list(context)[-self.model.max_context :]
        batch = encode_context(context, target_days, self.contrasts, self.model.max_context)
        batch = {k: v[None].to(self.device) for k, v in batch.items()}
        out = self.model(batch)
        tasks = self.model.tasks
        ref = context[reference_slot([v.days for v in context], target_days)]
        vox = voxel_volume_ml(ref.affine)

        ref_label = out["ref_label"][0].cpu().numpy().astype(np.uint8)
        ref_core, _ = lesion_volumes_ml(ref_label, vox)

        volumes = None
        if "progression" in tasks:
            volumes = out["log_volume"][0].float().expm1().clamp_min(0).cpu().tolist()
        current = ref.label is None and ref.days == target_days and "seg" in tasks
        if current:
            label = ref_label
            volumes = list(lesion_volumes_ml(label, vox))
        elif "future_seg" in tasks:
            label = out["future_label"][0].cpu().numpy().astype(np.uint8)
        else:
            label = ref_label
        copy = reference_image(batch["images"], batch["contrast_present"], batch["ref_slot"])
        pred = out["image"] if "image" in tasks else copy
        seen = batch["contrast_present"][0].any(dim=0).cpu().numpy()
        images = _by_contrast(pred, self.contrasts, seen)
        if "image" in tasks and self.fallback is not None and not current:
            kind = "future" if target_days > max(v.days for v in context) else "reconstruction"
            spacing = voxel_spacing_mm(ref.affine)
            near = near_lesion(ref_label, spacing, self.fallback.near_mm)
            copy_last = _by_contrast(copy, self.contrasts, seen)
            images = self.fallback.apply(kind, len(context), images, copy_last, near)
        core_ml = volumes[0] if volumes is not None else lesion_volumes_ml(label, vox)[0]
        status = progression_status(ref_core, core_ml, self.increase, self.decrease)
        return Prediction(images=images, label=label, core_volume_ml=float(core_ml), status=status)


def load_predictor(
    checkpoint_dir: Path | str, device: str = "cpu", n_samples: int | None = None
) -> Predictor:
    """Predictor of a checkpoint written by ``mtlgen train`` (its ``best/`` or ``last/``
    folder): the multi-task (or single-task) network, the image-only segmenter, or the
    generator over its ``base/`` model (``n_samples`` draws, default its own setting)."""
    if is_generator(checkpoint_dir):
        base = load_predictor(Path(checkpoint_dir) / BASE, device)
        denoiser, settings = load_generator(checkpoint_dir)
        return GenerativePredictor(base, denoiser, settings, n_samples, device=device)
    if read_meta(checkpoint_dir).get("architecture") == ImageSegmenter.__name__:
        segmenter = ImageSegmenter.from_pretrained(checkpoint_dir, map_location=device)  # local
        return SegmenterPredictor(segmenter, device)
    model = MultiTaskNet.from_pretrained(checkpoint_dir, map_location=device)  # local
    calibration, fallback = load_calibration(checkpoint_dir), load_fallback(checkpoint_dir)
    return ModelPredictor(model, device, calibration, fallback)


@dataclass
class NamedPredictor:
    """A loaded model under the name it was configured with (the name in metrics.json)."""

    name: str
    model: Predictor

    @property
    def segments(self) -> bool:
        """Whether the model answers segmentation cases."""
        return getattr(self.model, "segments", True)

    @property
    def segments_only(self) -> bool:
        """Whether the model answers segmentation cases only (an image-only segmenter)."""
        return getattr(self.model, "segments_only", False)

    @property
    def point_forecast(self) -> Predictor:
        """What answers mask, volume and status alone (a generator's base; else the model)."""
        return getattr(self.model, "point_forecast", self.model)

    def predict(self, context: Sequence[VisitArrays], target_days: float) -> Prediction:
        return self.model.predict(context, target_days)


def load_predictors(checkpoints: Mapping[str, Path], device: str = "auto") -> list[Predictor]:
    """Load each configured checkpoint (name -> folder) under its configured name, on ``device``
    (``auto``: CUDA when present)."""
    if not checkpoints:
        return []
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ValueError("evaluate.device: cuda requested but no CUDA device is available")
    loaded = []
    for name, directory in checkpoints.items():
        log.info("loading checkpoint %s from %s on %s", name, directory, device)
        loaded.append(NamedPredictor(name, load_predictor(directory, device=device)))
    return loaded
