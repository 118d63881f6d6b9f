"""Content hashes of source files (the identity of a scan version in the registry)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20


def sha256_files(files: Iterable[Path]) -> str:
    """SHA-256 over the bytes of ``files`` in the given order (one file: its plain sha256)."""
    digest = hashlib.sha256()
    for path in files:
        with Path(path).open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
