"""Identifier checks: IDs become folder and file names, so only plain tokens pass.

A failing identifier that may hold a source patient id or a path (``private``) is never repeated
verbatim: messages carry its length and a short keyed hash instead (``redact``).
"""

from __future__ import annotations

import hashlib
import hmac
import re

_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class InvalidIdentifier(ValueError):
    """An ID that is not a plain token (it could escape a folder or break a file name)."""


def digest(value: object, key: bytes | None = None) -> str:
    """The first 8 hex digits of HMAC-SHA256(``key``, ``value``): names a value without it."""
    text = value if isinstance(value, str) else repr(value)
    return hmac.new(key or b"mtlgen", text.encode(errors="replace"), hashlib.sha256).hexdigest()[:8]


def redact(value: object, key: bytes | None = None) -> str:
    """``<7 chars, hash 1a2b3c4d>``: a bad identifier as messages and the registry show it."""
    size = len(value) if isinstance(value, str) else 0
    return f"<{size} chars, hash {digest(value, key)}>"


def check_token(value: str, field: str, *, private: bool = False, key: bytes | None = None) -> str:
    """Return ``value`` if it is a plain token (letters, digits, ``_``/``-``; 1-64 chars).

    Rejects ``/``, ``..``, whitespace, control characters, NUL and empty strings, naming
    ``field`` and the value (redacted by ``key`` if ``private``) in the message.
    """
    if not isinstance(value, str) or not _TOKEN.match(value):
        shown = redact(value, key) if private else repr(value)
        raise InvalidIdentifier(
            f"{field} {shown} is not a plain identifier: expected 1-64 letters, "
            "digits, '_' or '-', starting with a letter or digit (no '/', '..', spaces or "
            "control chars)"
        )
    return value
