"""Whether a checkpoint can predict on the registry's model grid, checked before predicting.

A checkpoint records no grid: ``config.json`` holds the network's constructor arguments and
``meta.json`` the training record, neither a shape nor a spacing (the networks are fully
convolutional). What a checkpoint does fix is checked against the registry's processed files:
its input ``contrasts`` (at least one must be registered) and its down-sampling (``features``:
``len - 1`` halvings, so every side of the model grid must be a multiple of ``2**(len - 1)``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib

from mtlgen.inference.generative import BASE, is_generator
from mtlgen.io.series import PatientSeries
from mtlgen.models.hub import CONFIG


def grid_problem(checkpoint: Path | str, series: Sequence[PatientSeries]) -> str | None:
    """Why ``checkpoint`` does not fit the registry's grid (None when it does); a generator's
    through its base model (the generator works in cubes inside any grid)."""
    if is_generator(checkpoint):
        return grid_problem(Path(checkpoint) / BASE, series)
    path = Path(checkpoint) / CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return f"{path}: checkpoint file not found"
    except json.JSONDecodeError as exc:
        return f"{path}: not valid JSON ({exc})"
    contrasts = set(config.get("contrasts", []))
    registered = {c for s in series for v in s.visits for c in v.images}
    if contrasts and registered and not contrasts & registered:
        return (
            f"{path}: the model reads contrasts {sorted(contrasts)}, the registry has "
            f"{sorted(registered)}: none in common"
        )
    step = 2 ** (len(config.get("features", [None])) - 1)
    for patient in series:
        image = next(iter(patient.visits[0].images.values()))
        shape = nib.load(image).shape[:3]
        if any(n % step for n in shape):
            return (
                f"{path}: the model halves its input {step.bit_length() - 1} times, so each "
                f"side of the grid must be a multiple of {step}; patient {patient.patient}'s "
                f"model grid is {list(shape)} (registered with another preprocess.shape?)"
            )
    return None
