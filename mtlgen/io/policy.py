"""Which paths registration may read: the file policy, checked before a byte is read.

A scan is a regular file or a folder of DICOM files. Devices, FIFOs and sockets are refused at
once (``/dev/zero`` would be hashed forever, a FIFO would block), as are files over the size cap
and any path whose real location (symlinks followed) lies outside the source folder and the
roots listed in ``registry.allowed_roots``. Refusals are one-line reasons without the path.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from mtlgen.io.dicom import is_dicom

_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


class Refused(ValueError):
    """A path the file policy refuses; the message is the one-line reason."""


def admit(files: Sequence[Path], roots: Sequence[Path], max_bytes: int) -> tuple[Path, ...]:
    """The files to read for a scan (a folder stands for the DICOM files in it); raises
    ``Refused`` if any path breaks the policy."""
    out: list[Path] = []
    for path in files:
        real = _inside(Path(path), roots)
        try:
            mode = os.stat(real).st_mode
        except FileNotFoundError:
            raise Refused("file not found") from None
        if stat.S_ISDIR(mode):
            out.extend(_dicom_files(real, roots))
        elif stat.S_ISREG(mode):
            out.append(real)
        else:
            kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
            raise Refused(f"{kind}: expected a regular file or a folder of DICOM files")
    total = sum(p.stat().st_size for p in out)
    if total > max_bytes:
        raise Refused(
            f"too large ({total / 2**20:.0f} MiB): expected at most registry.max_file_mb "
            f"({max_bytes / 2**20:g} MiB)"
        )
    return tuple(out)


def _inside(path: Path, roots: Sequence[Path]) -> Path:
    real = Path(os.path.realpath(path))
    if not any(real.is_relative_to(os.path.realpath(r)) for r in roots):
        raise Refused(
            "outside the source folder: expected a path under the source folder or under a "
            "folder listed in registry.allowed_roots (params.yaml)"
        )
    return real


def _dicom_files(folder: Path, roots: Sequence[Path]) -> list[Path]:
    """The regular DICOM files directly in ``folder`` (symlinks must stay inside ``roots``)."""
    files = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        real = _inside(Path(entry.path), roots)
        if stat.S_ISREG(os.stat(real).st_mode) and is_dicom(real):
            files.append(real)
    if not files:
        raise Refused("folder holds no DICOM files: expected a regular file or a DICOM folder")
    return files
