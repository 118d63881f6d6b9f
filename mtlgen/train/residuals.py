"""The generator's training data: the forecast residuals (truth - a trained model's forecast)
of every future target, in lesion-centred cubes, with their conditioning (``conditioning`` and
``residual_target`` of ``mtlgen.inference.generative``).

Cases: every future target of the training and of the validation patients with every context
length up to ``max_context`` (the forecast from one visit misses differently from the forecast
from three); and, with ``data.reconstruction``, every
gap filler (a visit between two others, from the visits around it).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from mtlgen.data.samples import enumerate_samples
from mtlgen.inference.generative import GeneratorSettings, conditioning, residual_target
from mtlgen.inference.prediction import Predictor
from mtlgen.io.series import PatientSeries, VisitArrays, load_visit

log = logging.getLogger(__name__)


@dataclass
class ResidualCases:
    """Cubes of conditioning ``[N, 3C + 8, *cube]``, residual (images, then labels)
    ``[N, C + 2, *cube]`` and valid ``[N, C + 2]``."""

    cond: torch.Tensor
    residual: torch.Tensor
    valid: torch.Tensor

    def __len__(self) -> int:
        return self.cond.shape[0]

    def subset(self, idx: torch.Tensor) -> ResidualCases:
        return ResidualCases(self.cond[idx], self.residual[idx], self.valid[idx])

    def fingerprint(self) -> str:
        """A hash of every cube: another base model or cohort gives other cases."""
        digest = hashlib.sha256()
        for tensor in (self.cond, self.residual, self.valid):
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()


def forecast_specs(patient: PatientSeries, max_context: int) -> list[tuple[tuple[int, ...], int]]:
    """(context indices, target index) of the patient's future targets: the last k visits
    before each, for each k of 1..``max_context``."""
    specs = []
    for j in range(1, len(patient.visits)):
        specs += [(tuple(range(j - k, j)), j) for k in range(1, min(j, max_context) + 1)]
    return specs


def generator_specs(
    patient: PatientSeries, max_context: int, reconstruction: bool
) -> list[tuple[tuple[int, ...], int]]:
    """``forecast_specs``, then (``reconstruction``) the patient's gap fillers of
    ``enumerate_samples``: a visit between two others from the visits around it."""
    specs = forecast_specs(patient, max_context)
    if reconstruction:
        specs += [
            (s.context, s.target)
            for s in enumerate_samples(patient, max_context, True)
            if s.kind == "reconstruction"
        ]
    return specs


def residual_cases(
    predictor: Predictor,
    series: Sequence[PatientSeries],
    settings: GeneratorSettings,
    max_context: int,
    reconstruction: bool,
    progress: bool = False,
) -> ResidualCases:
    """The predictor's residuals of every case of ``generator_specs`` of ``series``, in cubes."""
    conds, residuals, valids = [], [], []
    for patient in tqdm(series, desc="forecast residuals", unit="patient", disable=not progress):
        loaded: dict[int, VisitArrays] = {}
        for context_idx, j in generator_specs(patient, max_context, reconstruction):
            for i in (*context_idx, j):
                if i not in loaded:
                    loaded[i] = load_visit(patient.visits[i])
            context, target = [loaded[i] for i in context_idx], loaded[j]
            try:
                forecast = predictor.predict(context, target.days)
            except ValueError as exc:  # e.g. no context visit has a contrast the model needs
                log.warning("%s: no residual for visit %s (%s)", patient.patient, j, exc)
                continue
            box, cond = conditioning(
                context, forecast, target.days, settings.contrasts, settings.crop
            )
            residual, valid = residual_target(
                target, forecast, settings.contrasts, box, settings.residual_scale
            )
            conds.append(cond)
            residuals.append(residual)
            valids.append(valid)
    if not conds:
        raise ValueError("no future targets: the generator needs patients with two visits")
    return ResidualCases(
        torch.from_numpy(np.stack(conds)),
        torch.from_numpy(np.stack(residuals)),
        torch.from_numpy(np.stack(valids)),
    )


def flipped_batch(
    cases: ResidualCases, idx: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """The cubes ``idx``, each flipped along a random set of axes (the same for conditioning
    and residual): left-right and other mirrors are as plausible as the originals."""
    out = [cases.cond[idx].clone(), cases.residual[idx].clone()]
    flips = torch.rand((len(idx), 3), generator=generator) < 0.5
    for b in range(len(idx)):
        dims = [2 + d for d in range(3) if flips[b, d]]
        if dims:
            out[0][b] = out[0][b].flip([d - 1 for d in dims])
            out[1][b] = out[1][b].flip([d - 1 for d in dims])
    return out[0], out[1], cases.valid[idx]
