"""Engines and sessions for the registry, one per call (safe across threads and processes).

SQLite: WAL journal, a busy timeout, and ``BEGIN IMMEDIATE`` so that a writer takes the write
lock at the start of its transaction and concurrent registrations queue instead of failing.
Switching a new file to WAL takes an exclusive lock that SQLite's busy timeout does not wait
for, so connections that open a new registry together retry the switch (``_use_wal``).
PostgreSQL: plain transactions; uniqueness races are resolved by constraints and savepoints.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.orm import Session

from mtlgen.registry.models import Base


def _use_wal(connection: sqlite3.Connection, timeout_s: float) -> None:
    """Put the database file in WAL mode (a setting the file keeps), retrying with backoff for
    up to ``timeout_s`` while another connection holds the lock the switch needs (SQLite
    answers "database is locked" at once there, or returns the old mode)."""
    deadline, delay = time.monotonic() + timeout_s, 0.01
    cursor = connection.cursor()
    try:
        while True:
            try:
                if cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() == "wal":
                    return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError(
                    f"database is locked: no WAL journal after {timeout_s:g} s of retries"
                )
            time.sleep(delay)
            delay = min(2 * delay, 0.5)
    finally:
        cursor.close()


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
            _use_wal(dbapi_connection, sqlite_timeout_s)
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

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
