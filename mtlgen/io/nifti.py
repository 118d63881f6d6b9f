"""NIfTI writing with atomic replace and explicit on-disk dtype."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from mtlgen.io.atomic import write_atomic


def save_nifti(
    target: Path | str, data: np.ndarray, affine: np.ndarray, dtype: np.dtype | str | None = None
) -> Path:
    """Write ``data`` with ``affine`` to ``target`` atomically (qform and sform both set)."""
    dtype = np.dtype(dtype or data.dtype)
    img = nib.Nifti1Image(np.asarray(data).astype(dtype, copy=False), affine)
    img.set_data_dtype(dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return write_atomic(target, lambda p: nib.save(img, p))
