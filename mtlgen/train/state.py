"""Resumable training state without pickle: tensors in safetensors, the rest in JSON.

``<dir>/train_state.safetensors`` holds the optimizer's tensors (``opt.<param>.<key>``) and the
loss weighting's state (``weighting.<name>``); ``<dir>/train_state.json`` holds the optimizer's
param groups and the loop's counters and history.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mtlgen.io.atomic import write_atomic, write_text_atomic

TENSORS, META = "train_state.safetensors", "train_state.json"


def save_train_state(
    directory: Path | str,
    optimizer: torch.optim.Optimizer,
    weighting: torch.nn.Module,
    loop: dict[str, Any],
) -> None:
    directory = Path(directory)
    opt = optimizer.state_dict()
    tensors = {
        f"opt.{idx}.{key}": torch.as_tensor(value).detach().cpu().contiguous()
        for idx, state in opt["state"].items()
        for key, value in state.items()
    }
    tensors.update(
        {f"weighting.{k}": v.detach().cpu().contiguous() for k, v in weighting.state_dict().items()}
    )
    write_atomic(directory / TENSORS, lambda p: save_file(tensors, str(p)))
    meta = {"param_groups": opt["param_groups"], "loop": loop}
    write_text_atomic(directory / META, json.dumps(meta, indent=1))


def has_train_state(directory: Path | str) -> bool:
    return (Path(directory) / META).exists() and (Path(directory) / TENSORS).exists()


def load_train_state(
    directory: Path | str, optimizer: torch.optim.Optimizer, weighting: torch.nn.Module
) -> dict[str, Any]:
    """Restore optimizer and weighting in place; return the loop's saved counters."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / META).read_text())
        tensors = load_file(str(directory / TENSORS))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{directory}: unreadable training state ({exc})") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    weighting.load_state_dict(
        {k.removeprefix("weighting."): v for k, v in tensors.items() if k.startswith("weighting.")}
    )
    return meta["loop"]
