"""Read a scan into a 3-D volume and check it before it is used.

A check that fails raises ``InvalidScan`` whose message is the one-line reason recorded in the
registry. Only *content* problems become ``InvalidScan``; operating-system errors (permissions,
I/O failures) propagate as ``OSError`` so a caller can retry them.
"""

from __future__ import annotations

import gzip
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from mtlgen.io.dicom import ConversionError, convert_series, is_dicom

_NIFTI_HEADER_SIZES = {348, 540}  # NIfTI-1, NIfTI-2
_CONTENT_ERRORS = (ImageFileError, EOFError, zlib.error, gzip.BadGzipFile, struct.error, ValueError)
_AFFINE_TOL = 1e-3


class InvalidScan(ValueError):
    """A scan that fails a check; the message is the one-line reason recorded in the registry."""


@dataclass(frozen=True)
class Volume:
    """A 3-D image and its voxel -> world (RAS mm) affine."""

    data: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def orientation(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))


def _is_nifti(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(4)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as gz:
                head = gz.read(4)
        except _CONTENT_ERRORS as exc:
            raise InvalidScan(
                f"unreadable or truncated file ({type(exc).__name__}: {exc})"
            ) from None
    if len(head) < 4:
        return False
    return any(struct.unpack(f"{e}i", head)[0] in _NIFTI_HEADER_SIZES for e in "<>")


def _load_nifti(path: Path) -> Volume:
    try:
        img = nib.load(path, mmap=False)
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except _CONTENT_ERRORS as exc:
        raise InvalidScan(f"unreadable or truncated file ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InvalidScan(f"not a NIfTI image ({type(img).__name__})")
    while data.ndim > 3 and data.shape[-1] == 1:  # 4-D policy: only a single volume is 3-D
        data = data[..., 0]
    return Volume(data, np.asarray(img.affine, dtype=np.float64))


def read_volume(files: tuple[Path, ...]) -> Volume:
    """Load a NIfTI file, a DICOM file, or the files of a DICOM series (converted by dcm2niix).

    A folder stands for the DICOM series inside it.
    """
    if len(files) == 1 and files[0].is_dir():
        files = tuple(sorted(p for p in files[0].iterdir() if p.is_file() and is_dicom(p)))
        if not files:
            raise InvalidScan("folder holds no DICOM files")
    for path in files:
        if not path.exists():
            raise InvalidScan(f"file not found: {path}")
    if len(files) == 1 and _is_nifti(files[0]):
        return _load_nifti(files[0])
    if all(is_dicom(p) for p in files):
        with tempfile.TemporaryDirectory(prefix="mtlgen-dcm-") as tmp:
            try:
                return _load_nifti(convert_series(files, Path(tmp)))
            except ConversionError as exc:
                raise InvalidScan(str(exc)) from None
    raise InvalidScan("not a NIfTI or DICOM file (no NIfTI header, no DICM magic)")


def check_image(vol: Volume, spacing_range_mm: tuple[float, float]) -> None:
    """3-D, finite, not constant, with a regular affine and a plausible voxel size."""
    shape = vol.data.shape
    dims = "x".join(map(str, shape))
    if vol.data.ndim == 4:
        raise InvalidScan(f"4-D image (shape {dims}): expected one 3-D volume")
    if vol.data.ndim != 3 or min(shape) < 2:
        raise InvalidScan(f"2-D image (shape {dims}): expected a 3-D volume")
    bad = int(np.size(vol.data) - np.count_nonzero(np.isfinite(vol.data)))
    if bad:
        raise InvalidScan(f"{bad} NaN/Inf voxels: expected finite intensities")
    lo, hi = float(vol.data.min()), float(vol.data.max())
    if lo == hi:
        raise InvalidScan(f"all voxels have the same value ({lo:g}): no image content")
    linear = vol.affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if not np.all(np.isfinite(vol.affine)) or abs(np.linalg.det(linear)) < 1e-6 * max(
        float(np.prod(spacing)), 1e-12
    ):
        raise InvalidScan("singular or non-finite affine: voxel-to-world mapping is degenerate")
    cosines = linear / spacing
    if not np.allclose(cosines.T @ cosines, np.eye(3), atol=_AFFINE_TOL):
        raise InvalidScan("sheared affine: voxel axes must be orthogonal (oblique is fine)")
    low, high = spacing_range_mm
    if spacing.min() < low or spacing.max() > high:
        mm = ", ".join(f"{s:g}" for s in spacing)
        raise InvalidScan(f"absurd voxel spacing ({mm}) mm: expected {low:g}-{high:g} mm")


def check_label(label: Volume, image: Volume, allowed: list[int]) -> None:
    """Same grid as its image, integer values from the declared set."""
    if label.data.shape != image.data.shape:
        raise InvalidScan(
            f"label shape {label.data.shape} does not match its image's {image.data.shape}"
        )
    if not np.allclose(label.affine, image.affine, atol=_AFFINE_TOL * max(image.spacing)):
        raise InvalidScan("label affine does not match its image's (different voxel-to-world)")
    if not np.all(np.isfinite(label.data)) or np.any(label.data != np.round(label.data)):
        raise InvalidScan("label holds non-integer values")
    extra = sorted(set(np.unique(label.data).astype(int).tolist()) - set(allowed))
    if extra:
        raise InvalidScan(f"label values {extra} outside the declared set {sorted(allowed)}")
