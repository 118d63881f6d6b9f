"""Task affinity: pairwise cosine similarity of task-loss gradients on shared parameters.

Positive: one task's step also lowers the other's loss (they help each other); negative: they
conflict; near zero: unrelated. Measured per epoch, written as JSON and a heatmap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mtlgen.io.atomic import write_atomic, write_text_atomic


def gradient_cosine(grads: Sequence[torch.Tensor]) -> np.ndarray:
    """[T, T] cosine similarity of flat gradient vectors (0 where a gradient is zero)."""
    g = torch.stack([x.detach().double().cpu() for x in grads])
    norms = g.norm(dim=1)
    unit = g / norms.clamp_min(1e-30)[:, None]
    cos = (unit @ unit.T).clamp(-1, 1)
    cos[norms == 0] = 0.0
    cos[:, norms == 0] = 0.0
    cos.fill_diagonal_(1.0)
    return cos.numpy()


def write_affinity(
    matrices: Sequence[np.ndarray], tasks: Sequence[str], out_dir: Path | str
) -> tuple[Path, Path]:
    """Write every epoch's matrix (affinity.json) and a heatmap of the last epoch and the mean over
    epochs (affinity.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    record = {
        "tasks": list(tasks),
        "measure": "cosine similarity of task-loss gradients on the shared parameters",
        "epochs": [
            {"epoch": e + 1, "matrix": np.round(m, 6).tolist()} for e, m in enumerate(matrices)
        ],
    }
    json_path = write_text_atomic(out_dir / "affinity.json", json.dumps(record, indent=1))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), constrained_layout=True)
    panels = (
        (matrices[-1], f"epoch {len(matrices)}"),
        (np.mean(matrices, axis=0), "mean over epochs"),
    )
    for ax, (m, title) in zip(axes, panels, strict=True):
        im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(tasks)), tasks, rotation=30)
        ax.set_yticks(range(len(tasks)), tasks)
        for (r, c), v in np.ndenumerate(m):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_title(f"task gradient cosine, {title}")
    fig.colorbar(im, ax=axes, shrink=0.8, label="cos(grad L_i, grad L_j)")
    png_path = write_atomic(out_dir / "affinity.png", lambda p: fig.savefig(p, dpi=110))
    plt.close(fig)
    return json_path, png_path
