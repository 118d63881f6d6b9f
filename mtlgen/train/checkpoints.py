"""A trained model's folder: the network's ``save_pretrained`` files (``model.safetensors``,
``config.json``), ``meta.json`` (the training record: architecture, split, seed, epoch,
validation losses, growth prior, loss weighting) and ``README.md`` (a model card a person can read).

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
from mtlgen.models.hub import CONFIG, META, WEIGHTS
from mtlgen.models.mtl_net import MultiTaskNet
from mtlgen.models.segmenter import ImageSegmenter

CARD = "README.md"


def model_card(model: MultiTaskNet | ImageSegmenter, meta: dict[str, Any]) -> str:
    """A short model card: what the network answers, from which inputs, trained how."""
    val = meta.get("val", {})
    if isinstance(model, ImageSegmenter):
        title, tags = "image-only segmentation network (MONAI UNet)", "segmentation"
        what = [
            "- task: lesion core and edema of one visit, from its images alone",
            f"- inputs: one visit's {', '.join(model.contrasts)}",
        ]
    else:
        kind = "multi-task" if len(model.tasks) > 1 else "single-task"
        title, tags = f"{kind} network", "longitudinal, multi-task"
        what = [
            f"- tasks: {', '.join(model.tasks)} (sharing: {model.sharing})",
            f"- inputs: up to {model.max_context} context visits of {', '.join(model.contrasts)}",
        ]
    lines = [
        "---",
        "library_name: mtlgen",
        f"tags: [medical-imaging, {tags}]",
        "---",
        "",
        f"# mtlgen {title}",
        "",
        *what,
        f"- trained: epoch {meta.get('epoch', '?')}, seed {meta.get('seed', '?')}, "
        f"split sha256 {str(meta.get('split_sha256', '?'))[:12]}",
        f"- validation loss: {val['val_loss']:.4f}" if "val_loss" in val else "- validation: none",
        "",
        f"Load it with `{type(model).__name__}.from_pretrained` on this folder or predict with",
        "`mtlgen.inference.model.load_predictor`; `meta.json` holds the training record.",
        "",
    ]
    return "\n".join(lines)


def save_checkpoint(
    directory: Path | str, model: MultiTaskNet | ImageSegmenter, meta: dict[str, Any]
) -> Path:
    """Write ``model`` (weights and constructor arguments), its training record (with its
    class as ``architecture``) and model card into ``directory``, each file atomically."""
    meta = {**meta, "architecture": type(model).__name__}
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
