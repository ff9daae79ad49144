"""Engines for the dispatch and accounting databases, the same way on SQLite and PostgreSQL.

On SQLite every transaction starts with ``BEGIN IMMEDIATE``: it takes the write lock up
front, so two runs serialize instead of failing half-way with "database is locked" after a
read, and SAVEPOINTs work (the pysqlite driver's own transaction handling is disabled, as
SQLAlchemy's documentation recommends).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dispatch.errors import DispatchError


def _psycopg(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use psycopg 3, the driver we ship."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class MissingDatabaseError(DispatchError):
    """A database opened read-only (the accounting source, a listing) does not exist."""


def make_engine(url: str, *, readonly: bool = False, name: str | None = None) -> Engine:
    """An engine for ``url``; SQLite files get their folder created, WAL and a busy timeout.

    ``readonly`` (the accounting source, listings): a SQLite file that does not exist is an
    error naming it (``name``: the setting it came from) — connecting would create an empty
    file, and a mistyped path would then read as "no invoices".
    """
    url = _psycopg(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        missing = None
        if readonly and db and db != ":memory:" and not db.startswith("file:"):
            setting = f"{name} " if name else ""
            hint = (
                "run `dispatch db init` first"
                if name == "DISPATCH_DB_URL"
                else "it is only read, never created"
            )
            missing = MissingDatabaseError(f"{setting}{url}: no SQLite database file at {db} ({hint})")
        if db and db != ":memory:" and not readonly:
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 60})
        _sqlite_transactions(engine, readonly=readonly)
        if missing is not None and db:
            _refuse_to_create(engine, Path(db), missing)
        return engine
    # Bulk writes go through COPY (dispatch.storage.bulk), so no INSERT page size is tuned here.
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _refuse_to_create(engine: Engine, path: Path, error: MissingDatabaseError) -> None:
    """Checked on each connection (not when the engine is made: a task that never reads the
    source must not fail for it), before SQLite would create an empty file."""

    @event.listens_for(engine, "do_connect")
    def _check(*_args: object) -> None:
        if not path.is_file():
            raise error


def _sqlite_transactions(engine: Engine, *, readonly: bool) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: object) -> None:  # the sqlite3 connection
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA busy_timeout = 60000")
        if not readonly:
            cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"
