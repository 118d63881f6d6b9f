"""Scheduled deployments as plain data: which flow, when (cron + time zone), with which settings.

``deployment_specs`` turns ``flows.schedules`` into one spec per flow; ``deployments``
hands them to Prefect (``mtlgen schedule`` / ``mtlgen serve``). Each deployment passes the
absolute settings file and the ``-S`` overrides as flow parameters, so a scheduled run validates
the same params.yaml as the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mtlgen.config import Params, load_config

ENTRYPOINTS = {
    "register": "flows/register.py:register_scan_series",
    "train": "flows/train.py:train_evaluate_promote",
    "predict": "flows/predict.py:predict_follow_ups",
    "pipeline": "flows/pipeline.py:longitudinal_pipeline",
}
DESCRIPTIONS = {
    "register": "Register new scan series from flows.source",
    "train": "Split, train a candidate, evaluate it against the champion, promote if no worse",
    "predict": "Predict follow-ups due within flows.predict_window_days with the champion",
    "pipeline": "Register -> retrain if enough new visits -> evaluate -> promote -> predict",
}


@dataclass(frozen=True)
class DeploymentSpec:
    name: str  # deployment name (= the flows.schedules key)
    entrypoint: str  # flows/<file>.py:<flow function>, relative to the project folder
    cron: str
    timezone: str
    description: str
    parameters: dict[str, object] = field(default_factory=dict)


def deployment_specs(
    params: Params, params_file: Path | str, overrides: Sequence[str] = ()
) -> list[DeploymentSpec]:
    """One spec per ``flows.schedules`` entry; ``params_file`` (+ overrides) must validate."""
    params_file = Path(params_file).resolve()
    if not params_file.is_file():
        raise FileNotFoundError(f"{params_file}: settings file not found")
    load_config(params_file, list(overrides))  # what the scheduled runs will read
    parameters = {"params_file": str(params_file), "overrides": list(overrides)}
    return [
        DeploymentSpec(
            name, ENTRYPOINTS[name], cron, params.flows.timezone, DESCRIPTIONS[name], parameters
        )
        for name, cron in params.flows.schedules.items()
    ]
