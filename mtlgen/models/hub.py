"""Saving and loading networks the Hugging Face way, restricted to local folders.

``PyTorchModelHubMixin`` records a network's constructor arguments: ``save_pretrained(folder)``
writes ``model.safetensors`` (weights, no pickle) and ``config.json`` (those arguments);
``from_pretrained`` on that folder rebuilds the network from the JSON and loads the weights. mtlgen
changes one thing: a checkpoint is a local folder, never a Hub id, so a missing folder is an
error instead of a download, weights are loaded strictly, and a network whose weights do not fit
says so in one line (the mixin's own local loader is lenient and prints to stdout).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
from huggingface_hub import PyTorchModelHubMixin
from huggingface_hub.constants import CONFIG_NAME, SAFETENSORS_SINGLE_FILE

WEIGHTS, CONFIG = SAFETENSORS_SINGLE_FILE, CONFIG_NAME  # "model.safetensors", "config.json"
META = "meta.json"  # the training record beside the weights; "architecture" names the class


def read_meta(directory: Path | str) -> dict[str, Any]:
    """The training record beside a checkpoint ({} if it has none)."""
    path = Path(directory) / META
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


class LocalHubMixin(PyTorchModelHubMixin):
    """``save_pretrained`` / ``from_pretrained`` of a local checkpoint folder."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any):  # local
        folder = Path(pretrained_model_name_or_path)
        for name in (CONFIG, WEIGHTS):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: checkpoint file not found")
        return super().from_pretrained(folder, local_files_only=True, **kwargs)  # local

    @classmethod
    def _from_pretrained(  # local
        cls,
        *,
        model_id: str,
        map_location: str = "cpu",
        strict: bool = True,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = True,
        token: str | bool | None = None,
        **model_kwargs: Any,
    ):
        weights = Path(model_id) / WEIGHTS
        try:
            model = cls(**model_kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{Path(model_id) / CONFIG}: does not fit {cls.__name__}: {exc}"
            ) from None
        try:
            safetensors.torch.load_model(
                model, str(weights), strict=strict, device=str(map_location)
            )
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise ValueError(
                f"{weights}: weights do not fit this version's {cls.__name__} ({detail}); the "
                "checkpoint was written by another version of mtlgen: retrain it"
            ) from None
        return model.eval()
