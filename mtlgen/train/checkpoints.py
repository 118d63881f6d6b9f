"""A trained model's folder: the network's ``save_pretrained`` files (``model.safetensors``,
``config.json``), ``meta.json`` (the training record: split, seed, epoch, validation losses,
growth prior, loss weighting) and ``README.md`` (a model card a person can read).

Each file is replaced atomically (written beside, then renamed), so a crash leaves the previous
epoch's file, never half a file; other files in the folder (``calibration.json``,
``registered.json``, the resumable ``train_state.safetensors``) are left alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mtlgen.io.atomic import write_text_atomic
from mtlgen.models.hub import CONFIG, WEIGHTS
from mtlgen.models.mtl_net import MultiTaskNet

META, CARD = "meta.json", "README.md"


def model_card(model: MultiTaskNet, meta: dict[str, Any]) -> str:
    """A short model card: what the network answers, from which inputs, trained how."""
    val = meta.get("val", {})
    lines = [
        "---",
        "library_name: mtlgen",
        "tags: [medical-imaging, longitudinal, multi-task]",
        "---",
        "",
        f"# mtlgen {'multi-task' if len(model.tasks) > 1 else 'single-task'} network",
        "",
        f"- tasks: {', '.join(model.tasks)} (sharing: {model.sharing})",
        f"- inputs: up to {model.max_context} context visits of {', '.join(model.contrasts)}",
        f"- trained: epoch {meta.get('epoch', '?')}, seed {meta.get('seed', '?')}, "
        f"split sha256 {str(meta.get('split_sha256', '?'))[:12]}",
        f"- validation loss: {val['val_loss']:.4f}" if "val_loss" in val else "- validation: none",
        "",
        "Load it with `MultiTaskNet.from_pretrained` on this folder (mtlgen.models.mtl_net) or",
        "predict with `mtlgen.inference.model.load_predictor`; `meta.json` holds the training",
        "record.",
        "",
    ]
    return "\n".join(lines)


def save_checkpoint(directory: Path | str, model: MultiTaskNet, meta: dict[str, Any]) -> Path:
    """Write ``model`` (weights and constructor arguments), its training record and model card
    into ``directory``, each file atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # beside the folder, not in it: a save killed midway leaves nothing in what MLflow logs
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}-") as tmp:
        model.save_pretrained(tmp)
        for name in (WEIGHTS, CONFIG):
            os.replace(Path(tmp) / name, directory / name)
    write_text_atomic(directory / META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    write_text_atomic(directory / CARD, model_card(model, meta))
    return directory


def read_meta(directory: Path | str) -> dict[str, Any]:
    """The training record beside a checkpoint ({} if it has none)."""
    path = Path(directory) / META
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
