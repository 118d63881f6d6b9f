"""What a training run writes besides its checkpoints: ``history.csv`` / ``history.json``
(per-epoch losses, task weights, validation losses, times), ``affinity.json`` / ``affinity.png``
(per-epoch task-gradient cosine matrices and their heatmap) and ``train_result.json``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mtlgen.io.atomic import write_atomic, write_text_atomic


@dataclass(frozen=True)
class TrainResult:
    checkpoint_dir: Path  # best validation checkpoint
    last_dir: Path  # last epoch's checkpoint + resumable state
    tasks: tuple[str, ...]
    wall_time_s: float  # this call's training time (a resumed run counts its own part)
    total_train_time_s: float  # summed over all runs that built this model
    affinity_time_s: float  # the part of it spent measuring task affinity (extra backward passes)
    epochs_run: int
    best_epoch: int
    best_val: dict[str, float]
    history_csv: Path
    history_json: Path
    affinity_json: Path | None
    affinity_png: Path | None
    world_size: int = 1
    replica_max_abs_diff: float | None = None  # DDP: largest weight difference between processes

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def write_history(history: list[dict[str, float]], out_dir: Path) -> tuple[Path, Path]:
    """``history.csv`` and ``history.json`` of the per-epoch rows."""
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in history for k in row))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    csv_path = write_text_atomic(out_dir / "history.csv", buf.getvalue())
    json_path = write_text_atomic(out_dir / "history.json", json.dumps(history, indent=1))
    return csv_path, json_path


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
