"""The MLflow ``python_function`` flavour of an mtlgen checkpoint, without pickle.

MLflow stores the checkpoint folder (``model.safetensors`` + ``config.json``) as the model's data
and names this module as its loader; loading calls ``_load_pyfunc`` which rebuilds the network
with ``MultiTaskNet.from_pretrained`` (weights from safetensors, constructor from JSON), or, for
a generator checkpoint (``generative.json``), its denoiser and sampler.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlgen.generative.pipeline import ResidualDiffusionPipeline
from mtlgen.generative.schedulers import training_scheduler
from mtlgen.inference.generative import is_generator, load_generator
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


class GeneratorModel:
    """Draws residual samples ``[n, C + 2, *S]`` (images, then labels) for one conditioning
    ``{"cond": [3C + 8, *S]}`` (``mtlgen.inference.generative.conditioning``); params
    ``n_samples`` and ``seed``."""

    def __init__(self, checkpoint_dir: Path | str) -> None:
        denoiser, self.settings = load_generator(Path(checkpoint_dir))
        self.pipeline = ResidualDiffusionPipeline(
            denoiser,
            training_scheduler(self.settings.train_timesteps),
            self.settings.sampler,
            self.settings.steps,
        )

    def predict(self, model_input: Any, params: dict | None = None) -> Any:
        if not isinstance(model_input, Mapping) or "cond" not in model_input:
            raise TypeError("expected {'cond': array [3C + 8, *S]} (the conditioning channels)")
        params = params or {}
        cond = torch.as_tensor(np.asarray(model_input["cond"], dtype=np.float32))
        n = int(params.get("n_samples", self.settings.n_samples))
        return self.pipeline(cond, n, int(params.get("seed", self.settings.seed))).numpy()


def _load_pyfunc(data_path: str) -> CheckpointModel | GeneratorModel:
    return GeneratorModel(data_path) if is_generator(data_path) else CheckpointModel(data_path)
