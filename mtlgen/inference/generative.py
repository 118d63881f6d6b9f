"""The generative predictor: the multi-task model's deterministic forecast, with residuals drawn
by the diffusion generator (``mtlgen.generative``) inside the lesion-centred cube.

Conditioning channels, on the cube: the forecast image per contrast, the reference (copy-last)
image per contrast, the next observed visit's image per contrast (a reconstruction between two
visits; zeros for a forecast), the forecast's, the reference's and the next visit's core and
edema (zeros without a label), the gap from the reference visit to the target and from the
target to the next visit, in years (0 without one). A contrast the forecast lacks is zero in
every image channel.

The residual is drawn jointly for the images and the label (``mtlgen.generative.labels``: the
one-hot core and edema of the truth minus the forecast's), so each sample carries its own mask;
its core is then grown or shrunk to a calibrated volume (``mtlgen.generative.volumes``: the
validation patients' error quantiles, assigned in the order of the drawn volumes). The share
of samples with lesion per voxel is the lesion-probability map, each sample's lesion-core
volume gives the volume interval and each sample's status (the base's volumetric rule against
the reference volume) the status probabilities. Outside the cube every sample keeps the
forecast's image and label.

``generative.json`` beside the denoiser's weights records how it was trained (contrasts, cube
size, residual scale, schedule length, sampler, steps, samples, seed) and the ``centre`` and
``spread`` fitted on the validation patients: the samples' mean image residual is scaled by the
first (0 would keep the deterministic forecast as the mean image), their deviations from it by
the second; ``volumes`` holds the validation patients' volume-error quantiles the samples' core
volumes are set to (``mtlgen.generative.volumes``). A checkpoint folder holds its base model
in ``base/`` (``mtlgen.inference.model.load_predictor`` loads both).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mtlgen.generative.crops import Box, lesion_box
from mtlgen.generative.labels import CLASSES, label_residual, labels_from_residuals
from mtlgen.generative.network import ResidualDenoiser
from mtlgen.generative.pipeline import ResidualDiffusionPipeline
from mtlgen.generative.schedulers import Sampler, training_scheduler
from mtlgen.generative.volumes import VolumeSpread, couple
from mtlgen.inference.baselines import reference_visit
from mtlgen.inference.intervals import group_of, horizon_days, horizon_years
from mtlgen.inference.prediction import Prediction, Predictor
from mtlgen.io.atomic import write_text_atomic
from mtlgen.io.series import VisitArrays
from mtlgen.progression import (
    DAYS_PER_YEAR,
    STATUSES,
    lesion_volumes_ml,
    progression_status,
    voxel_volume_ml,
)

SETTINGS = "generative.json"
BASE = "base"  # the base model's checkpoint inside a generator checkpoint


@dataclass(frozen=True)
class GeneratorSettings:
    """How a generator was trained and is sampled (``generative.json``)."""

    contrasts: tuple[str, ...]
    crop: int
    residual_scale: float
    train_timesteps: int
    sampler: Sampler
    steps: int
    n_samples: int = 8
    seed: int = 0
    centre: float = 1.0
    spread: float = 1.0
    volumes: dict | None = None  # ``VolumeSpread.to_dict()`` fitted on validation patients

    def save(self, directory: Path) -> Path:
        return write_text_atomic(Path(directory) / SETTINGS, json.dumps(asdict(self), indent=2))

    def volume_spread(self) -> VolumeSpread:
        """The calibrated sample volumes; refused when there are none (a generator trained
        before them)."""
        try:
            return VolumeSpread(**(self.volumes or {}))
        except TypeError:
            raise ValueError(
                "generator settings hold no calibrated volumes; retrain the generator"
            ) from None

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
    return 3 * len(contrasts) + 8


def out_channels(contrasts: Sequence[str]) -> int:
    """The drawn channels: an image residual per contrast, then the label residuals."""
    return len(contrasts) + len(CLASSES)


def forecast_label(cond: np.ndarray, n_contrasts: int) -> np.ndarray:
    """The forecast's label on the cube, read back from its conditioning channels."""
    core, edema = cond[3 * n_contrasts], cond[3 * n_contrasts + 1]
    return np.where(core > 0.5, 1, np.where(edema > 0.5, 2, 0)).astype(np.uint8)


def next_visit(context: Sequence[VisitArrays], target_days: float) -> VisitArrays | None:
    """The earliest context visit after ``target_days`` (a reconstruction), else None."""
    after = [v for v in context if v.days > target_days]
    return min(after, key=lambda v: v.days) if after else None


def conditioning(
    context: Sequence[VisitArrays],
    forecast: Prediction,
    target_days: float,
    contrasts: Sequence[str],
    crop: int,
) -> tuple[Box, np.ndarray]:
    """The cube around the forecast lesion (the reference lesion when the forecast has none)
    and the conditioning channels on it ``[3C + 8, crop, crop, crop]`` (see module doc)."""
    reference = reference_visit(context, target_days)
    after = next_visit(context, target_days)
    centre = forecast.label > 0
    if not centre.any() and reference.label is not None:
        centre = reference.label > 0
    box = lesion_box(centre, crop)
    empty = np.zeros((crop,) * 3, np.float32)
    channels = []
    for source in (forecast.images, reference.images, after.images if after else {}):
        channels += [
            source[c][box] if c in forecast.images and c in source else empty for c in contrasts
        ]
    for label in (forecast.label, reference.label, after.label if after else None):
        channels += [empty, empty] if label is None else [label[box] == 1, label[box] == 2]
    gap_after = (after.days - target_days) / DAYS_PER_YEAR if after else 0.0
    channels.append(np.full((crop,) * 3, (target_days - reference.days) / DAYS_PER_YEAR))
    channels.append(np.full((crop,) * 3, gap_after))
    return box, np.stack(channels).astype(np.float32)


def residual_target(
    target: VisitArrays,
    forecast: Prediction,
    contrasts: Sequence[str],
    box: Box,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(residual ``[C + 2, *cube]``, valid ``[C + 2]``): per contrast (truth - forecast) /
    ``scale``, then the label residual (``label_residual``); a contrast or label that the truth
    or the forecast lacks is zero and not valid."""
    crop = box[0].stop - box[0].start
    residual = np.zeros((out_channels(contrasts), crop, crop, crop), np.float32)
    valid = np.zeros(out_channels(contrasts), bool)
    for i, c in enumerate(contrasts):
        if c in target.images and c in forecast.images:
            residual[i] = (target.images[c][box] - forecast.images[c][box]) / scale
            valid[i] = True
    if target.label is not None and forecast.label is not None:
        residual[len(contrasts) :] = label_residual(target.label[box], forecast.label[box])
        valid[len(contrasts) :] = True
    return residual, valid


def check_fits(denoiser: ResidualDenoiser, settings: GeneratorSettings) -> None:
    """Refuse a denoiser that does not draw ``settings``' channels, or settings without the
    calibrated volumes (both: a generator trained before them)."""
    if denoiser.out_channels != out_channels(settings.contrasts):
        raise ValueError(
            f"denoiser draws {denoiser.out_channels} channels: expected "
            f"{out_channels(settings.contrasts)} (images and labels); retrain the generator"
        )
    settings.volume_spread()


class GenerativePredictor:
    """Samples follow-ups: ``base``'s forecast plus drawn image and label residuals in the
    cube; ``images`` is the samples' mean, ``samples`` every draw, and each draw's label summed
    up (see module doc). Mask, volume and status are the base's point forecast, which
    ``point_forecast`` answers alone (volume calibration needs nothing more); the status rule
    (``increase`` / ``decrease``) is the base's."""

    def __init__(
        self,
        base: Predictor,
        denoiser: ResidualDenoiser,
        settings: GeneratorSettings,
        n_samples: int | None = None,
        seed: int | None = None,
        device: str = "cpu",
        name: str = "generative",
    ) -> None:
        check_fits(denoiser, settings)
        self.base, self.settings = base, settings
        self.volumes = settings.volume_spread()
        self.n_samples = n_samples or settings.n_samples
        self.seed = settings.seed if seed is None else seed
        self.pipeline = ResidualDiffusionPipeline(
            denoiser.to(device),
            training_scheduler(settings.train_timesteps),
            settings.sampler,
            settings.steps,
        )
        self.segments = getattr(base, "segments", False)
        self.increase, self.decrease = base.increase, base.decrease
        self.point_forecast = base
        self.calibration = getattr(base, "calibration", None)
        self.name = name

    def predict(self, context: Sequence[VisitArrays], target_days: float) -> Prediction:
        forecast = self.base.predict(context, target_days)
        if target_days in {v.days for v in context}:  # segmenting a visit: nothing to draw
            return forecast
        s = self.settings
        box, cond = conditioning(context, forecast, target_days, s.contrasts, s.crop)
        draws = self.pipeline(torch.from_numpy(cond), self.n_samples, self.seed).numpy()
        mean = draws.mean(axis=0)
        n_images = len(s.contrasts)
        draws[:, :n_images] = s.centre * mean[:n_images] + s.spread * (
            draws[:, :n_images] - mean[:n_images]
        )
        samples, images = {}, {}
        for i, c in enumerate(s.contrasts):
            if c not in forecast.images:
                continue
            stack = np.repeat(forecast.images[c][None], self.n_samples, axis=0)
            stack[(slice(None), *box)] += s.residual_scale * draws[:, i]
            samples[c], images[c] = stack, stack.mean(axis=0)
        pred = replace(forecast, images=images, samples=samples)
        if forecast.label is None:
            return pred
        labels = np.repeat(forecast.label[None], self.n_samples, axis=0)
        labels[(slice(None), *box)] = self._calibrated(
            forecast.label[box], draws[:, n_images:], context, target_days
        )
        return self._summarised(pred, labels, context, target_days)

    def _calibrated(
        self,
        forecast: np.ndarray,
        residuals: np.ndarray,
        context: Sequence[VisitArrays],
        target_days: float,
    ) -> np.ndarray:
        """The drawn labels on the cube, their cores resized to the calibrated volumes."""
        kind = "future" if next_visit(context, target_days) is None else "reconstruction"
        horizon = horizon_days([v.days for v in context], target_days)
        years = horizon_years(horizon, self.volumes.min_days)
        vox = voxel_volume_ml(reference_visit(context, target_days).affine)
        core_ml = float((forecast == 1).sum()) * vox
        group = group_of(kind, len(context))
        targets = self.volumes.targets(group, core_ml, years, len(residuals)) / vox
        return couple(labels_from_residuals(forecast, residuals), targets.round())

    def _summarised(
        self,
        pred: Prediction,
        labels: np.ndarray,
        context: Sequence[VisitArrays],
        target_days: float,
    ) -> Prediction:
        """``pred`` with the sample ``labels`` summed up: lesion probability, volumes, status
        probabilities."""
        reference = reference_visit(context, target_days)
        vox = voxel_volume_ml(reference.affine)
        volumes = np.array([lesion_volumes_ml(label, vox)[0] for label in labels])
        ref_ml = self._reference_ml(context, reference)
        statuses = [progression_status(ref_ml, v, self.increase, self.decrease) for v in volumes]
        return replace(
            pred,
            lesion_prob=(labels > 0).mean(axis=0).astype(np.float32),
            volume_samples_ml=volumes,
            status_probs={st: statuses.count(st) / len(statuses) for st in STATUSES},
        )

    def _reference_ml(self, context: Sequence[VisitArrays], reference: VisitArrays) -> float:
        """The reference visit's core volume: from its label, else the base's segmentation."""
        if reference.label is not None:
            return lesion_volumes_ml(reference.label, voxel_volume_ml(reference.affine))[0]
        upto = [v for v in context if v.days <= reference.days]
        return self.base.predict(upto, reference.days).core_volume_ml


def load_generator(directory: Path) -> tuple[ResidualDenoiser, GeneratorSettings]:
    """The denoiser and its settings from a generator checkpoint folder."""
    denoiser = ResidualDenoiser.from_pretrained(directory)  # local
    settings = GeneratorSettings.load(directory)
    check_fits(denoiser, settings)
    return denoiser, settings


def is_generator(directory: Path | str) -> bool:
    """Whether ``directory`` is a generator checkpoint (it has ``generative.json``)."""
    return (Path(directory) / SETTINGS).is_file()
