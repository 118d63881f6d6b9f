"""Atomic file writes: write to a temporary sibling, then rename over the target; and the
removal of temporaries a killed writer left behind."""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# .<name>.<pid>-<token>.tmp<suffixes> (this module), .<name>.<pid>.tmp (the pseudonym key) and
# the pid-less .<name>.<token>.tmp<suffixes> of older versions
_TEMPORARY = re.compile(r"^\..+?\.(?:(?P<pid>\d+)(?:-[0-9a-f]{12})?|[0-9a-f]{12})\.tmp(?:\..*)?$")


@contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    The temporary name keeps the target's suffixes (``.nii.gz`` stays ``.nii.gz``) so
    writers that choose a format by extension behave, and names the writing process (see
    ``remove_stale_temporaries``). On error the temporary is removed and ``target`` is
    untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    tmp_path = target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp{suffix}"
    # created like any new file (mode 0666 & ~umask), unlike mkstemp's private 0600
    os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_atomic(target: Path | str, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``target`` atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def write_text_atomic(target: Path | str, text: str) -> Path:
    return write_atomic(target, lambda p: p.write_text(text))


def remove_stale_temporaries(folder: Path | str, older_than_s: float) -> int:
    """Remove the temporaries under ``folder`` whose writer is gone: its process no longer runs
    on this machine, or the file is older than ``older_than_s`` (a writer elsewhere, or a
    temporary without a process id). Returns how many were removed."""
    removed, now = 0, time.time()
    for path in Path(folder).rglob(".*.tmp*") if Path(folder).is_dir() else []:
        match = _TEMPORARY.match(path.name)
        if match is None or not path.is_file():
            continue
        pid = match.group("pid")
        try:
            stale = now - path.stat().st_mtime > older_than_s
            if stale or (pid is not None and not _running(int(pid))):
                path.unlink()
                removed += 1
        except FileNotFoundError:  # its writer finished or another run removed it meanwhile
            continue
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True
