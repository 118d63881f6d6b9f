"""The MLflow ``python_function`` flavour of an mtlgen checkpoint, without pickle.

MLflow stores the checkpoint folder (``model.safetensors`` + ``config.json``) as the model's data
and names this module as its loader; loading calls ``_load_pyfunc`` which rebuilds the network
through ``mtlgen.models.checkpoint.load_checkpoint`` (registered architectures only).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlgen.models.checkpoint import load_checkpoint


def _to_numpy(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.detach().cpu().numpy()
    if isinstance(out, Mapping):
        return {k: _to_numpy(v) for k, v in out.items()}
    if isinstance(out, tuple | list):
        return type(out)(_to_numpy(v) for v in out)
    return out


class CheckpointModel:
    """Runs the network in eval mode on an array (``model(x)``) or a dict of arrays
    (``model(batch)``, as ``MultiTaskNet`` takes it); returns arrays in the same structure."""

    def __init__(self, checkpoint_dir: Path | str) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.model, self.config = load_checkpoint(self.checkpoint_dir)
        self.model.eval()

    def predict(self, model_input: Any, params: dict | None = None) -> Any:
        with torch.no_grad():
            if isinstance(model_input, Mapping):
                batch = {k: torch.as_tensor(np.asarray(v)) for k, v in model_input.items()}
                return _to_numpy(self.model(batch))
            return _to_numpy(self.model(torch.as_tensor(np.asarray(model_input))))


def _load_pyfunc(data_path: str) -> CheckpointModel:
    return CheckpointModel(data_path)
