"""The extract's staging table: a chunk's keys in a temporary table of the dispatch database, so
that what the chunk must be compared with in the history (ids already imported, numbers taken
by another invoice) is found by joins on indexes instead of by reading the history.

PostgreSQL stages with ``COPY … FROM STDIN`` (one CSV buffer built by pandas, no Python loop
over rows) and joins through the indexes (:func:`probing_indexes`); SQLite with one
``executemany``. The table lives in the extract's transaction: PostgreSQL drops it at commit,
and the extract drops it itself on SQLite (and both lose it on a rollback).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Connection, text

from dispatch.storage import bulk_load

KEYS = "extract_keys"
KEY_COLUMNS = ("invoice_id", "org_id", "number")


def create_keys_table(conn: Connection) -> None:
    on_commit = " ON COMMIT DROP" if conn.dialect.name == "postgresql" else ""
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {KEYS} "
        f"(invoice_id TEXT NOT NULL, org_id TEXT NOT NULL, number TEXT NOT NULL){on_commit}"
    )
    conn.exec_driver_sql(f"DELETE FROM {KEYS}")


def drop_keys_table(conn: Connection) -> None:
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {KEYS}")


def stage_keys(conn: Connection, keys: pd.DataFrame) -> None:
    """Replace the staged keys by ``keys`` (columns ``KEY_COLUMNS``, no missing values)."""
    conn.exec_driver_sql(f"DELETE FROM {KEYS}")
    if keys.empty:
        return
    frame = keys.loc[:, list(KEY_COLUMNS)].astype(str)
    if conn.dialect.name == "postgresql":
        buffer = io.StringIO()
        frame.to_csv(buffer, header=False, index=False)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY {KEYS} ({', '.join(KEY_COLUMNS)}) FROM STDIN (FORMAT csv)") as copy:
            copy.write(buffer.getvalue())
    else:
        conn.exec_driver_sql(
            f"INSERT INTO {KEYS} VALUES (?, ?, ?)", list(frame.itertuples(index=False, name=None))
        )


@contextmanager
def probing_indexes(conn: Connection) -> Iterator[None]:
    """Join the staged keys with ``invoices`` by probing its indexes, one probe per key.

    Costs alone, PostgreSQL hashes 10,000 keys and scans every invoice of the history
    (``EXPLAIN ANALYZE`` over 310,000 invoices: 284 ms, the whole table read, against a few
    ms of index probes): the day's cost would grow with the history. Hash and merge joins
    are switched off for these statements only (``SET LOCAL``, reset after)."""
    if conn.dialect.name != "postgresql":
        yield
        return
    conn.exec_driver_sql("SET LOCAL enable_hashjoin = off")
    conn.exec_driver_sql("SET LOCAL enable_mergejoin = off")
    try:
        yield
    finally:
        conn.exec_driver_sql("RESET enable_hashjoin")
        conn.exec_driver_sql("RESET enable_mergejoin")


def known_ids(conn: Connection) -> set[str]:
    """Staged ids already imported (the chunk's updates, as opposed to its new invoices)."""
    with probing_indexes(conn):
        rows = conn.execute(
            text(f"SELECT k.invoice_id FROM {KEYS} k JOIN invoices i ON i.invoice_id = k.invoice_id")
        )
        return set(rows.scalars())


def numbers_taken(conn: Connection) -> set[str]:
    """Staged ids whose (organization, number) another imported invoice already holds
    (probes of the index on ``(number, org_id)``)."""
    with probing_indexes(conn):
        rows = conn.execute(
            text(
                f"SELECT DISTINCT k.invoice_id FROM {KEYS} k JOIN invoices i"
                " ON i.number = k.number AND i.org_id = k.org_id AND i.invoice_id <> k.invoice_id"
            )
        )
        return set(rows.scalars())


# --- a first run's bulk load (PostgreSQL) --------------------------------------------------------

#: A window whose first chunk holds at least this many rows, into an ``invoices`` table that
#: holds at most 1/BULK_HISTORY_RATIO of that, is loaded in bulk (see :func:`bulk_load_of_invoices`).
BULK_MIN_ROWS = 20_000
BULK_HISTORY_RATIO = 10
#: kept while loading: the primary key (the known-ids check, and the actions' foreign key
#: refers to it) and the index the chunks' duplicate-number join reads
KEPT_DURING_LOAD = ("pk_invoices", "ix_invoices_number_org_id")


@dataclass(frozen=True)
class BulkLoad:
    """A first run's bulk load is under way in this transaction."""

    #: the template queue was empty when locked: the load's new invoices are COPYed into it too
    queue_empty: bool = False


@contextmanager
def bulk_load_of_invoices(conn: Connection, first_chunk_rows: int) -> Iterator[BulkLoad | None]:
    """PostgreSQL's "Populating a Database" for a first run: when the window's first chunk
    holds at least :data:`BULK_MIN_ROWS` rows and ``invoices`` at most a
    :data:`BULK_HISTORY_RATIO`-th of that, lock the table and let the chunks COPY their new
    invoices straight into it; its other indexes are built once, after the load
    (:func:`dispatch.storage.bulk_load.deferred_indexes`, which says why every guarantee holds:
    one transaction, DDL included). Yields ``None`` when the load goes row by row (upserts).

    What is particular to the extract:

    * **The lock first.** ``ACCESS EXCLUSIVE`` on ``invoices`` before anything is read from
      it: no concurrent run can insert an invoice between this run's check of which ids are
      new and its COPY of them, so the new ids need no ``ON CONFLICT``.
    * **The checks.** Ids already imported are found by the primary key, numbers another
      invoice holds by the ``(number, org_id)`` index: both kept (:data:`KEPT_DURING_LOAD`).
    * **The queue.** ``template_queue`` is locked ``EXCLUSIVE`` (readable, not writable by
      others); when it is empty, the load's new invoices are COPYed into it as well (no
      ``ON CONFLICT``: each is new and queued once), else queued with ``ON CONFLICT``.
    """
    if not bulk_load.supported(conn) or first_chunk_rows < BULK_MIN_ROWS:
        yield None
        return
    limit = first_chunk_rows // BULK_HISTORY_RATIO
    if bulk_load.count_up_to(conn, "invoices", limit + 1) > limit:
        yield None
        return
    bulk_load.lock_tables(conn, ["invoices"])
    conn.exec_driver_sql("LOCK TABLE template_queue IN EXCLUSIVE MODE")
    queue_empty = bool(conn.exec_driver_sql("SELECT NOT EXISTS (SELECT 1 FROM template_queue)").scalar())
    with bulk_load.deferred_indexes(conn, ["invoices"], keep=KEPT_DURING_LOAD):
        yield BulkLoad(queue_empty)
