"""Content hashes of source files (the identity of a scan version in the registry)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20


def sha256_files(files: Iterable[Path], max_bytes: int | None = None) -> str:
    """SHA-256 over the bytes of ``files`` in the given order (one file: its plain sha256).

    Raises ``ValueError`` once more than ``max_bytes`` were read (a file that grows while it is
    read cannot stall registration)."""
    digest, read = hashlib.sha256(), 0
    for path in files:
        with Path(path).open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                read += len(chunk)
                if max_bytes is not None and read > max_bytes:
                    raise ValueError(f"more than {max_bytes} bytes: over the size cap")
                digest.update(chunk)
    return digest.hexdigest()
