"""The extract's staging table: a chunk's keys in a temporary table of the dispatch database, so
that what the chunk must be compared with in the history (ids already imported, numbers taken
by another invoice) is found by joins on indexes instead of by reading the history.

PostgreSQL stages with ``COPY … FROM STDIN`` (one CSV buffer built by pandas, no Python loop
over rows) and analyzes the table so the planner joins through the indexes; SQLite with one
``executemany``. The table lives in the extract's transaction: PostgreSQL drops it at commit,
and the extract drops it itself on SQLite (and both lose it on a rollback).
"""

from __future__ import annotations

import io

import pandas as pd
from sqlalchemy import Connection, text

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
        conn.exec_driver_sql(f"ANALYZE {KEYS}")
    else:
        conn.exec_driver_sql(
            f"INSERT INTO {KEYS} VALUES (?, ?, ?)", list(frame.itertuples(index=False, name=None))
        )


def known_ids(conn: Connection) -> set[str]:
    """Staged ids already imported (the chunk's updates, as opposed to its new invoices)."""
    rows = conn.execute(
        text(f"SELECT k.invoice_id FROM {KEYS} k JOIN invoices i ON i.invoice_id = k.invoice_id")
    )
    return set(rows.scalars())


def numbers_taken(conn: Connection) -> set[str]:
    """Staged ids whose (organization, number) another imported invoice already holds."""
    rows = conn.execute(
        text(
            f"SELECT DISTINCT k.invoice_id FROM {KEYS} k JOIN invoices i"
            " ON i.org_id = k.org_id AND i.number = k.number AND i.invoice_id <> k.invoice_id"
        )
    )
    return set(rows.scalars())
