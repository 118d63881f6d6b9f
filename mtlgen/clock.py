"""The time outputs are stamped with: UTC now, or ``SOURCE_DATE_EPOCH`` (whole seconds, the
reproducible-builds convention) when set, so that the same inputs give identical files."""

from __future__ import annotations

import os
from datetime import datetime, timezone


def stamp_now() -> datetime:
    """UTC now, or the time ``SOURCE_DATE_EPOCH`` pins."""
    pinned = os.environ.get("SOURCE_DATE_EPOCH")
    if pinned is None:
        return datetime.now(timezone.utc)
    try:
        return datetime.fromtimestamp(int(pinned), timezone.utc)
    except ValueError:
        raise ValueError(
            f"SOURCE_DATE_EPOCH={pinned!r}: expected whole seconds since 1970-01-01"
        ) from None
