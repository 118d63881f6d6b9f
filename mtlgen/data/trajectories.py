"""Lesion-volume trajectories of a cohort's cases, read from the labels alone.

What the progression head's closed-form parts are fitted on before training (the future cases;
``mtlgen.models.priors.fit_growth_prior``), what their volume intervals are calibrated on out
of sample (``mtlgen.evaluate.calibration.cross_fitted_cases``) and what
``bench/volume_corrections.py`` scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch

from mtlgen.data.dataset import reference_slot
from mtlgen.data.samples import enumerate_samples
from mtlgen.io.series import PatientSeries
from mtlgen.progression import DAYS_PER_YEAR, lesion_volumes_ml, voxel_volume_ml


@dataclass(frozen=True)
class Trajectories:
    """N cases, as the progression head sees them (volume types: core, whole lesion)."""

    patients: tuple[str, ...]  # [N] the case's patient
    kinds: tuple[str, ...]  # [N] future | reconstruction
    volumes: torch.Tensor  # [N, K, 2] ml of the context visits (zeros in padded slots)
    years: torch.Tensor  # [N, K] context time minus target time
    valid: torch.Tensor  # [N, K] bool
    ref: torch.Tensor  # [N] reference (last observed) slot
    truth: torch.Tensor  # [N, 2] ml at the target

    def __len__(self) -> int:
        return len(self.patients)

    def of(self, patients: Sequence[str]) -> Trajectories:
        """The cases of ``patients``."""
        chosen = set(patients)
        return self._where([p in chosen for p in self.patients])

    def future(self) -> Trajectories:
        """The future cases."""
        return self._where([k == "future" for k in self.kinds])

    def _where(self, flags: Sequence[bool]) -> Trajectories:
        keep = torch.tensor(list(flags), dtype=torch.bool)
        return Trajectories(
            tuple(p for p, f in zip(self.patients, flags, strict=True) if f),
            tuple(k for k, f in zip(self.kinds, flags, strict=True) if f),
            self.volumes[keep],
            self.years[keep],
            self.valid[keep],
            self.ref[keep],
            self.truth[keep],
        )


def volume_trajectories(
    series: Sequence[PatientSeries], max_context: int, reconstruction: bool = False
) -> Trajectories:
    """Every future case (and with ``reconstruction`` every gap filler) of
    ``enumerate_samples`` of the patients whose visits all have a label."""
    patients, kinds, volumes, years, valid, refs, truth = [], [], [], [], [], [], []
    for patient in series:
        if not patient.visits or any(v.label is None for v in patient.visits):
            continue
        ml = []
        for visit in patient.visits:
            label = nib.load(visit.label)
            ml.append(lesion_volumes_ml(np.asarray(label.dataobj), voxel_volume_ml(label.affine)))
        for spec in enumerate_samples(patient, max_context, reconstruction):
            target_days = patient.visits[spec.target].days
            days = [patient.visits[i].days for i in spec.context]
            v, t = torch.zeros(max_context, 2), torch.zeros(max_context)
            v[: len(days)] = torch.tensor([ml[i] for i in spec.context])
            t[: len(days)] = torch.tensor([(d - target_days) / DAYS_PER_YEAR for d in days])
            patients.append(patient.patient)
            kinds.append(spec.kind)
            volumes.append(v)
            years.append(t)
            valid.append(torch.arange(max_context) < len(days))
            refs.append(reference_slot(days, target_days))
            truth.append(torch.tensor(ml[spec.target]))
    if not patients:
        k = max_context
        return Trajectories(
            (), (), torch.zeros(0, k, 2), torch.zeros(0, k), torch.zeros(0, k, dtype=torch.bool),
            torch.zeros(0, dtype=torch.int64), torch.zeros(0, 2),
        )
    return Trajectories(
        tuple(patients),
        tuple(kinds),
        torch.stack(volumes),
        torch.stack(years),
        torch.stack(valid),
        torch.tensor(refs),
        torch.stack(truth),
    )
