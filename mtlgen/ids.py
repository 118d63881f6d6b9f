"""Identifier checks: IDs become folder and file names, so only plain tokens pass."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class InvalidIdentifier(ValueError):
    """An ID that is not a plain token (it could escape a folder or break a file name)."""


def check_token(value: str, field: str) -> str:
    """Return ``value`` if it is a plain token (letters, digits, ``_``/``-``; 1-64 chars).

    Rejects ``/``, ``..``, whitespace, control characters, NUL and empty strings, naming
    ``field`` in the message.
    """
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise InvalidIdentifier(
            f"{field} {value!r} is not a plain identifier: expected 1-64 letters, digits, "
            "'_' or '-', starting with a letter or digit (no '/', '..', spaces or control chars)"
        )
    return value
