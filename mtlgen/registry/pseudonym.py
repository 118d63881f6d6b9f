"""Pseudonyms: HMAC-SHA256 of the source patient id under a secret key.

The key comes from the environment variable ``MTLGEN_PSEUDONYM_KEY`` or, if that is unset,
from ``registry.key_file`` (created with 32 random bytes and mode 0600 on first use). The same
key always gives the same pseudonym, so re-registration finds the patient again; without the
key a pseudonym cannot be traced back to the source id.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from mtlgen.ids import check_token

KEY_ENV = "MTLGEN_PSEUDONYM_KEY"
_MIN_KEY_CHARS = 16


def load_key(key_file: Path) -> bytes:
    """The pseudonym key: ``$MTLGEN_PSEUDONYM_KEY``, else ``key_file`` (created if missing)."""
    env = os.environ.get(KEY_ENV)
    if env is not None:
        if len(env) < _MIN_KEY_CHARS:
            raise ValueError(f"${KEY_ENV}: expected at least {_MIN_KEY_CHARS} characters")
        return env.encode()
    key_file = Path(key_file)
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = key_file.with_name(f".{key_file.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, key_file)  # fails if another process created it first: keep theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = key_file.read_text().strip()
    if len(key) < _MIN_KEY_CHARS:
        raise ValueError(
            f"{key_file}: pseudonym key too short (expected >= {_MIN_KEY_CHARS} chars)"
        )
    return key.encode()


def pseudonymise(source_id: str, key: bytes) -> str:
    """``p`` + the first 16 hex digits of HMAC-SHA256(key, source id): a plain token."""
    digest = hmac.new(key, source_id.encode(), hashlib.sha256).hexdigest()
    return check_token(f"p{digest[:16]}", "pseudonym")
