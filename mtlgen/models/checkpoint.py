"""Checkpoints without pickle: ``model.safetensors`` (weights) + ``config.json`` (how to rebuild).

An architecture is rebuilt only from the names in ``ARCHITECTURES`` (no import paths from files),
with the constructor arguments stored in the JSON; extra metadata (metrics, data version, task
list, optimiser step) rides along under ``"meta"``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mtlgen.io.atomic import write_atomic, write_text_atomic

WEIGHTS, CONFIG = "model.safetensors", "config.json"
ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {}


def register_architecture(name: str):
    """Class decorator: make ``name`` rebuildable from a checkpoint's config."""

    def wrap(cls):
        if name in ARCHITECTURES and ARCHITECTURES[name] is not cls:
            raise ValueError(f"architecture {name!r} registered twice")
        ARCHITECTURES[name] = cls
        cls.architecture_name = name
        return cls

    return wrap


def save_checkpoint(
    directory: Path | str,
    model: torch.nn.Module,
    init_kwargs: dict[str, Any],
    meta: dict | None = None,
) -> Path:
    """Write weights and config of ``model`` (built as ``cls(**init_kwargs)``) to ``directory``."""
    name = getattr(type(model), "architecture_name", None)
    if name is None:
        raise TypeError(f"{type(model).__name__} is not registered with @register_architecture")
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(directory / WEIGHTS, lambda p: save_file(state, str(p)))
    config = {"architecture": name, "init": init_kwargs, "meta": meta or {}}
    write_text_atomic(directory / CONFIG, json.dumps(config, indent=2, sort_keys=True))
    return directory


def read_config(directory: Path | str) -> dict[str, Any]:
    path = Path(directory) / CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint config not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    for key in ("architecture", "init"):
        if key not in config:
            raise ValueError(f"{path}: missing key {key!r}")
    return config


def load_checkpoint(
    directory: Path | str, map_location: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` strictly."""
    import mtlgen.models.architectures  # noqa: F401  (registers the project's networks)

    config = read_config(directory)
    name = config["architecture"]
    if name not in ARCHITECTURES:
        raise ValueError(
            f"{Path(directory) / CONFIG}: unknown architecture {name!r}; "
            f"expected one of {sorted(ARCHITECTURES)}"
        )
    try:
        model = ARCHITECTURES[name](**config["init"])
    except TypeError as exc:
        raise ValueError(f"{Path(directory) / CONFIG}: init does not fit {name!r}: {exc}") from None
    state = load_file(str(Path(directory) / WEIGHTS), device=str(map_location))
    missing, unexpected = (
        model.state_dict().keys() - state.keys(),
        state.keys() - model.state_dict().keys(),
    )
    if missing or unexpected:
        raise ValueError(
            f"{Path(directory) / WEIGHTS}: weights do not fit this version's {name!r} "
            f"(missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}); "
            "the checkpoint was written by another version of mtlgen: retrain it"
        )
    model.load_state_dict(state, strict=True)
    return model, config
