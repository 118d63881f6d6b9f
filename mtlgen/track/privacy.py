"""Which identifiers must never reach a tracking server: the registry's source patient IDs."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse


def source_ids(url: str, sqlite_timeout_s: float = 120.0) -> set[str]:
    """Every source patient ID the registry at ``url`` knows (empty if there is no registry yet)."""
    from sqlalchemy import select

    from mtlgen.registry.db import session_scope
    from mtlgen.registry.models import PatientId

    if urlparse(url).scheme == "sqlite" and not Path(url.split(":///", 1)[-1]).exists():
        return set()
    with session_scope(url, sqlite_timeout_s) as session:
        return set(session.scalars(select(PatientId.source_id)))
