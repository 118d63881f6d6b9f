"""The generative predictor: the multi-task model's deterministic forecast, with residuals drawn
by the diffusion generator (``mtlgen.generative``) inside the lesion-centred cube.

Conditioning channels, on the cube: the forecast image per contrast, the reference (copy-last)
image per contrast, the forecast's core and edema, the reference visit's core and edema (zeros
when it has no label) and the gap from the reference visit to the target in years. A contrast
the forecast lacks is zero in both image channels.

``generative.json`` beside the denoiser's weights records how it was trained (contrasts, cube
size, residual scale, schedule length, sampler, steps) and the ``spread`` fitted on the
validation patients: the samples' deviations from their mean are scaled by it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mtlgen.generative.crops import Box, lesion_box
from mtlgen.generative.network import ResidualDenoiser
from mtlgen.generative.pipeline import ResidualDiffusionPipeline
from mtlgen.generative.schedulers import Sampler, training_scheduler
from mtlgen.inference.baselines import reference_visit
from mtlgen.inference.prediction import Prediction, Predictor
from mtlgen.io.atomic import write_text_atomic
from mtlgen.io.series import VisitArrays
from mtlgen.progression import DAYS_PER_YEAR

SETTINGS = "generative.json"


@dataclass(frozen=True)
class GeneratorSettings:
    """How a generator was trained and is sampled (``generative.json``)."""

    contrasts: tuple[str, ...]
    crop: int
    residual_scale: float
    train_timesteps: int
    sampler: Sampler
    steps: int
    spread: float = 1.0

    def save(self, directory: Path) -> Path:
        return write_text_atomic(Path(directory) / SETTINGS, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> GeneratorSettings:
        path = Path(directory) / SETTINGS
        try:
            raw = json.loads(path.read_text())
            return cls(**{**raw, "contrasts": tuple(raw["contrasts"])})
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: generator settings not found") from None
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise ValueError(f"{path}: not generator settings ({exc})") from None


def cond_channels(contrasts: Sequence[str]) -> int:
    return 2 * len(contrasts) + 5


def conditioning(
    context: Sequence[VisitArrays],
    forecast: Prediction,
    target_days: float,
    contrasts: Sequence[str],
    crop: int,
) -> tuple[Box, np.ndarray]:
    """The cube around the forecast lesion (the reference lesion when the forecast has none)
    and the conditioning channels on it ``[2C + 5, crop, crop, crop]``."""
    reference = reference_visit(context, target_days)
    centre = forecast.label > 0
    if not centre.any() and reference.label is not None:
        centre = reference.label > 0
    box = lesion_box(centre, crop)
    channels = []
    for source in (forecast.images, reference.images):
        channels += [
            source[c][box] if c in forecast.images and c in source else np.zeros((crop,) * 3)
            for c in contrasts
        ]
    ref_label = reference.label if reference.label is not None else np.zeros_like(forecast.label)
    for label in (forecast.label, ref_label):
        channels += [label[box] == 1, label[box] == 2]
    gap = (target_days - reference.days) / DAYS_PER_YEAR
    channels.append(np.full((crop,) * 3, gap))
    return box, np.stack(channels).astype(np.float32)


def residual_target(
    target: VisitArrays,
    forecast: Prediction,
    contrasts: Sequence[str],
    box: Box,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(residual ``[C, *cube]`` = (truth - forecast) / ``scale``, valid ``[C]``): a contrast
    that the truth or the forecast lacks is zero and not valid."""
    crop = box[0].stop - box[0].start
    residual = np.zeros((len(contrasts), crop, crop, crop), np.float32)
    valid = np.zeros(len(contrasts), bool)
    for i, c in enumerate(contrasts):
        if c in target.images and c in forecast.images:
            residual[i] = (target.images[c][box] - forecast.images[c][box]) / scale
            valid[i] = True
    return residual, valid


class GenerativePredictor:
    """Samples follow-ups: ``base``'s forecast plus drawn residuals in the cube; ``images`` is
    the samples' mean, ``samples`` every draw. Mask, volume and status are the base's."""

    def __init__(
        self,
        base: Predictor,
        denoiser: ResidualDenoiser,
        settings: GeneratorSettings,
        n_samples: int = 8,
        seed: int = 0,
        device: str = "cpu",
        name: str = "generative",
    ) -> None:
        self.base, self.settings, self.n_samples, self.seed = base, settings, n_samples, seed
        self.pipeline = ResidualDiffusionPipeline(
            denoiser.to(device),
            training_scheduler(settings.train_timesteps),
            settings.sampler,
            settings.steps,
        )
        self.segments = getattr(base, "segments", False)
        self.name = name

    def predict(self, context: Sequence[VisitArrays], target_days: float) -> Prediction:
        forecast = self.base.predict(context, target_days)
        if target_days in {v.days for v in context}:  # segmenting a visit: nothing to draw
            return forecast
        s = self.settings
        box, cond = conditioning(context, forecast, target_days, s.contrasts, s.crop)
        draws = self.pipeline(torch.from_numpy(cond), self.n_samples, self.seed).numpy()
        draws = draws.mean(axis=0) + s.spread * (draws - draws.mean(axis=0))
        samples, images = {}, {}
        for i, c in enumerate(s.contrasts):
            if c not in forecast.images:
                continue
            stack = np.repeat(forecast.images[c][None], self.n_samples, axis=0)
            stack[(slice(None), *box)] += s.residual_scale * draws[:, i]
            samples[c], images[c] = stack, stack.mean(axis=0)
        return replace(forecast, images=images, samples=samples)


def load_generator(directory: Path) -> tuple[ResidualDenoiser, GeneratorSettings]:
    """The denoiser and its settings from a generator checkpoint folder."""
    denoiser = ResidualDenoiser.from_pretrained(directory)  # local
    return denoiser, GeneratorSettings.load(directory)
