"""The MLflow ``python_function`` flavour of an mtlgen checkpoint, without pickle.

MLflow stores the checkpoint folder (``model.safetensors`` + ``config.json``) as the model's data
and names this module as its loader; loading calls ``_load_pyfunc`` which rebuilds the network
with ``MultiTaskNet.from_pretrained`` (weights from safetensors, constructor from JSON).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlgen.models.mtl_net import MultiTaskNet


class CheckpointModel:
    """Runs the network in eval mode on a dict of arrays (a batch, as ``MultiTaskNet`` takes
    it, e.g. from ``mtlgen.data.dataset.encode_context``); returns a dict of arrays."""

    def __init__(self, checkpoint_dir: Path | str) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.model = MultiTaskNet.from_pretrained(self.checkpoint_dir)  # local

    def predict(self, model_input: Any, params: dict | None = None) -> Any:
        if not isinstance(model_input, Mapping):
            raise TypeError(
                f"expected a dict of arrays (the network's batch), got {type(model_input).__name__}"
            )
        batch = {k: torch.as_tensor(np.asarray(v)) for k, v in model_input.items()}
        with torch.no_grad():
            return {k: v.detach().cpu().numpy() for k, v in self.model(batch).items()}


def _load_pyfunc(data_path: str) -> CheckpointModel:
    return CheckpointModel(data_path)
