"""Engines and sessions for the registry, one per call (safe across threads and processes).

SQLite: WAL journal, a busy timeout, and ``BEGIN IMMEDIATE`` so that a writer takes the write
lock at the start of its transaction and concurrent registrations queue instead of failing.
PostgreSQL: plain transactions; uniqueness races are resolved by constraints and savepoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.orm import Session

from mtlgen.registry.models import Base


def make_engine(url: str, sqlite_timeout_s: float = 120.0) -> Engine:
    """An engine for ``url`` with the schema created; the SQLite file's folder is created."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True)
    else:
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": sqlite_timeout_s})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None  # let SQLAlchemy emit BEGIN itself
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        Base.metadata.create_all(engine)
    except (IntegrityError, ProgrammingError):  # another process created the schema meanwhile
        Base.metadata.create_all(engine)
    return engine


@contextmanager
def session_scope(url: str, sqlite_timeout_s: float = 120.0) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error."""
    engine = make_engine(url, sqlite_timeout_s)
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session
    finally:
        engine.dispose()
