"""Resumable training state without pickle, in ONE atomically written safetensors file.

``<dir>/train_state.safetensors`` holds the state of each named module (``<module>.<name>``,
e.g. ``model.*`` and the loss weighting's ``weighting.*``), the optimizer's tensors
(``opt.<param>.<key>``) and any extra tensors (``extra.<name>``, e.g. a random generator's
state); its string metadata holds the optimizer's param groups and the loop's counters and
history as JSON. One file means a crash can never pair weights of one epoch with counters of
another.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mtlgen.io.atomic import write_atomic

STATE = "train_state.safetensors"


def save_train_state(
    directory: Path | str,
    modules: Mapping[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    loop: dict[str, Any],
    extra: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    opt = optimizer.state_dict()
    tensors = {
        f"{name}.{k}": v for name, module in modules.items() for k, v in module.state_dict().items()
    }
    tensors.update(
        {
            f"opt.{idx}.{key}": torch.as_tensor(value)
            for idx, state in opt["state"].items()
            for key, value in state.items()
        }
    )
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"param_groups": json.dumps(opt["param_groups"]), "loop": json.dumps(loop)}
    path = Path(directory) / STATE
    return write_atomic(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def read_loop(directory: Path | str) -> dict[str, Any] | None:
    """The saved loop counters, or None when there is no readable state."""
    path = Path(directory) / STATE
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["loop"])
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable training state ({exc})") from None


def load_train_state(
    directory: Path | str,
    modules: Mapping[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore the modules and the optimizer in place; return the loop's saved counters and
    the extra tensors."""
    path = Path(directory) / STATE
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

    for name, module in modules.items():
        module.load_state_dict(part(f"{name}."), strict=True)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in part("opt.").items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return json.loads(meta["loop"]), part("extra.")
