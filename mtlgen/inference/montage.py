"""``montage.png`` of a prediction: per contrast, the last visit, the predicted mean and (with
samples) the standard deviation, on the axial slice through the most predicted lesion, with the
predicted lesion outlined (core red, edema yellow)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from mtlgen.io.atomic import write_atomic


def to_ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``volume``'s axes reordered and flipped to R, A, S (axial slices along the last)."""
    ornt = nib.orientations.io_orientation(affine)
    to = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt("RAS"))
    return nib.orientations.apply_orientation(volume, to)


def _panel(ax, image: np.ndarray, label: np.ndarray, title: str, cmap: str) -> None:
    ax.imshow(np.rot90(image), cmap=cmap)
    for value, colour in ((2, "yellow"), (1, "red")):
        layer = np.rot90(label == value).astype(float)
        if layer.any():
            ax.contour(layer, levels=[0.5], colors=colour, linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def montage_png(
    rows: Mapping[str, Mapping[str, np.ndarray]], label: np.ndarray, affine: np.ndarray
) -> bytes:
    """PNG bytes: one row per contrast of ``rows`` (contrast -> {"last visit": ..., "predicted
    mean": ..., ["std": ...]}), every volume on the grid of ``affine`` like ``label``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = to_ras(np.asarray(label), affine)
    area = mask.reshape(-1, mask.shape[2]).astype(bool).sum(0)
    z = int(area.argmax()) if area.max() > 0 else mask.shape[2] // 2
    columns = max(len(panels) for panels in rows.values())
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(2.2 * columns, 2.2 * len(rows)), dpi=80, squeeze=False
    )
    for r, (contrast, panels) in enumerate(rows.items()):
        for c, ax in enumerate(axes[r]):
            if c >= len(panels):
                ax.set_axis_off()
                continue
            title, volume = list(panels.items())[c]
            cmap = "magma" if title == "std" else "gray"
            _panel(ax, to_ras(volume, affine)[:, :, z], mask[:, :, z], f"{contrast} {title}", cmap)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_montage(
    target: Path,
    rows: Mapping[str, Mapping[str, np.ndarray]],
    label: np.ndarray,
    affine: np.ndarray,
) -> Path:
    """``montage_png`` written atomically to ``target``."""
    png = montage_png(rows, label, affine)
    return write_atomic(target, lambda p: Path(p).write_bytes(png))
