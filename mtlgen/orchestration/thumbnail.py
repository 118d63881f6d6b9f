"""Small PNG thumbnails of a predicted follow-up: the axial slice through the most lesion."""

from __future__ import annotations

import io
from pathlib import Path

import nibabel as nib
import numpy as np

from mtlgen.inference.montage import to_ras


def thumbnail_png(image: Path | str, label: Path | str | None = None, inches: float = 2.0) -> bytes:
    """PNG bytes of ``image``'s axial slice with the largest lesion area (middle slice if no
    lesion), lesion core outlined in red and edema in yellow; any stored orientation (native
    space) is shown as RAS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = nib.load(image)
    data = to_ras(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    mask = None
    if label is not None:
        mask = to_ras(np.asarray(nib.load(label).dataobj, dtype=np.uint8), img.affine)
    area = mask.reshape(-1, mask.shape[2]).astype(bool).sum(0) if mask is not None else None
    z = int(area.argmax()) if area is not None and area.max() > 0 else data.shape[2] // 2
    fig, ax = plt.subplots(figsize=(inches, inches), dpi=64)
    ax.imshow(np.rot90(data[:, :, z]), cmap="gray")
    if mask is not None:
        for value, colour in ((2, "yellow"), (1, "red")):
            layer = np.rot90(mask[:, :, z] == value).astype(float)
            if layer.any():
                ax.contour(layer, levels=[0.5], colors=colour, linewidths=0.8)
    ax.set_axis_off()
    fig.subplots_adjust(0, 0, 1, 1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
