"""Large loads into a table: its indexes and foreign keys built once, after the rows.

PostgreSQL's "Populating a Database" advice: inserting N rows into a table maintains each of
its B-trees entry by entry (a random page per entry for a hash-like key, and a full-page
image in the WAL the first time each page is touched after a checkpoint) and fires the
foreign key's check once per row (a ``SELECT … FOR KEY SHARE`` of the referenced row, which
also writes a row lock into it). Building an index after the load is one sort; adding a
foreign key validates every row in one join. When a load brings more rows than the table
holds — a first run, a mass import — the second way is several times cheaper.

:func:`deferred_indexes` does it inside the caller's transaction, so every guarantee holds:

* **Transactional DDL**: the indexes and constraints are dropped and built again in the
  same transaction as the load. A crash, an error or a rollback anywhere leaves the table
  with its indexes and constraints exactly as before; a commit publishes the rows and the
  rebuilt indexes together. The unique and primary keys are checked when built, the foreign
  key validated when added: a violation fails the load as a per-row check would.
* **The lock**: the tables are locked ``ACCESS EXCLUSIVE`` first (before anything else is
  read from them, so that no lock is ever upgraded), up to the commit; dropping a foreign
  key also takes ``ACCESS EXCLUSIVE`` on the referenced table, which the caller should lock
  in the same :func:`lock_tables` for the same reason. Every other session that
  reads or writes these tables (the web pages, another run, the webhooks) waits for the
  commit — the few seconds of a first run's load — instead of seeing a table without its
  indexes. A concurrent run that wanted the same load waits for the lock, then finds the
  rows loaded and counts again.
* **Only when it pays**: the caller decides with :func:`worth_deferring` after taking the
  lock, from exact counts — the rows to load against the rows the table holds.
* **SQLite**: a no-op (its loads are one transaction of ``executemany`` and its indexes are
  small); the caller's statements run the same either way.

Indexes the load itself reads (e.g. a unique key the statements join on) are kept with
``keep``; they are maintained row by row as usual.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Connection, text

#: A load is deferred only from this many rows: below it, the per-row maintenance is cheap
#: and the rebuild's fixed costs (a sort per index, the lock) are not worth it.
BULK_MIN_ROWS = 100_000

#: ``maintenance_work_mem`` for the index builds of a deferred load (the server's default,
#: 64 MB, spills a sort of a million keys to disk).
BUILD_MEMORY = "256MB"


@dataclass
class Deferred:
    """What was dropped from one table, to build again: ``(name, definition)`` pairs."""

    table: str
    constraints: list[tuple[str, str]] = field(default_factory=list)  # primary, unique
    foreign_keys: list[tuple[str, str]] = field(default_factory=list)
    indexes: list[tuple[str, str]] = field(default_factory=list)  # CREATE INDEX statements


def supported(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def lock_tables(conn: Connection, tables: Iterable[str]) -> None:
    """``ACCESS EXCLUSIVE`` on ``tables`` up to the commit (PostgreSQL; a no-op elsewhere)."""
    names = list(tables)
    if supported(conn) and names:
        conn.exec_driver_sql(f"LOCK TABLE {', '.join(names)} IN ACCESS EXCLUSIVE MODE")


def count_up_to(conn: Connection, table: str, limit: int) -> int:
    """The table's rows, counted up to ``limit`` (the cost follows the smaller of the two)."""
    stmt = text(f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT :limit) AS t")
    return int(conn.execute(stmt, {"limit": limit}).scalar() or 0)


def worth_deferring(conn: Connection, table: str, incoming: int, *, min_rows: int = BULK_MIN_ROWS) -> bool:
    """Whether loading ``incoming`` rows into ``table`` should build its indexes afterwards:
    PostgreSQL, at least ``min_rows`` rows, and more rows than the table holds now (its
    rebuild then sorts at most twice the rows loaded). Call it under :func:`lock_tables`, so
    the count cannot change before the load."""
    if not supported(conn) or incoming < max(min_rows, 1):
        return False
    return count_up_to(conn, table, incoming) < incoming


def _definitions(conn: Connection, table: str, keep: set[str]) -> Deferred:
    found = Deferred(table)
    rows = conn.execute(
        text(
            "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = CAST(:t AS regclass) AND contype IN ('p', 'u', 'f') ORDER BY conname"
        ),
        {"t": table},
    ).all()
    for name, kind, definition in rows:
        if name in keep:
            continue
        target = found.foreign_keys if kind == "f" else found.constraints
        target.append((name, definition))
    rows = conn.execute(
        text(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = CAST(:t AS regclass) "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid "
            "                AND k.conrelid = i.indrelid) "
            "ORDER BY c.relname"
        ),
        {"t": table},
    ).all()
    found.indexes = [(name, definition) for name, definition in rows if name not in keep]
    return found


def _drop(conn: Connection, deferred: Deferred) -> None:
    for name, _ in deferred.foreign_keys + deferred.constraints:
        conn.exec_driver_sql(f'ALTER TABLE {deferred.table} DROP CONSTRAINT "{name}"')
    for name, _ in deferred.indexes:
        conn.exec_driver_sql(f'DROP INDEX "{name}"')


def _build(conn: Connection, deferred: Deferred) -> None:
    for name, definition in deferred.constraints:
        conn.exec_driver_sql(f'ALTER TABLE {deferred.table} ADD CONSTRAINT "{name}" {definition}')
    for _, definition in deferred.indexes:
        conn.exec_driver_sql(definition)
    for name, definition in deferred.foreign_keys:
        # validated here, in one pass over the table (a join), instead of once per row
        conn.exec_driver_sql(f'ALTER TABLE {deferred.table} ADD CONSTRAINT "{name}" {definition}')


@contextmanager
def deferred_indexes(
    conn: Connection, tables: Iterable[str], *, keep: Iterable[str] = ()
) -> Iterator[list[Deferred]]:
    """Drop the indexes, primary and unique keys and foreign keys of ``tables`` (but those
    named in ``keep``), let the caller load, then build them all again — in the caller's
    transaction, which must hold :func:`lock_tables` on ``tables`` already. Yields what was
    deferred (empty on SQLite, where nothing is dropped). If the block raises, nothing is
    rebuilt: the caller's rollback restores the table as it was."""
    names = list(tables)
    if not supported(conn) or not names:
        yield []
        return
    kept = set(keep)
    deferred = [_definitions(conn, t, kept) for t in names]
    for d in deferred:
        _drop(conn, d)
    yield deferred
    conn.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{BUILD_MEMORY}'")
    for d in deferred:
        _build(conn, d)
