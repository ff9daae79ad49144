"""Transactions for stages: each stage asks ``db.tx()`` for a unit of work.

A normal run commits each unit on its own (a stage is a transaction, so a retried task
starts from a consistent state). A preview wraps the whole run in one outer transaction
and turns each unit into a SAVEPOINT, then rolls everything back: the preview executes
exactly the code a run would, and changes nothing (SPEC B8).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine


class Database:
    """The dispatch database as stages see it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """A transaction committed on success, rolled back on error."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn


class RollbackDatabase(Database):
    """Every unit of work is a SAVEPOINT inside one transaction that is never committed."""

    def __init__(self, engine: Engine, conn: Connection) -> None:
        super().__init__(engine)
        self.conn = conn

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.conn.begin_nested():
            yield self.conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        yield self.conn


@contextmanager
def rollback_database(engine: Engine) -> Iterator[RollbackDatabase]:
    """A database whose changes all disappear when the block ends."""
    with engine.connect() as conn:
        outer = conn.begin()
        try:
            yield RollbackDatabase(engine, conn)
        finally:
            outer.rollback()
