"""Set-based writes that work the same on SQLite and PostgreSQL.

Stages write whole columns at once: executemany batches (one round trip per few thousand
rows), ``IN`` lists in chunks, and dialect-native upserts (``INSERT … ON CONFLICT``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Table, bindparam, update
from sqlalchemy.dialects import postgresql, sqlite

CHUNK = 900  # stays under SQLite's default limit of bound parameters per statement


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def dialect_insert(conn: Connection, table: Table):  # type: ignore[no-untyped-def]
    """The dialect's INSERT construct, which knows ``on_conflict_do_*``."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"dialect {conn.dialect.name} is not supported")


def insert_ignore(conn: Connection, table: Table, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    """Insert rows, skipping those whose ``keys`` already exist (idempotent re-runs)."""
    if rows:
        conn.execute(dialect_insert(conn, table).on_conflict_do_nothing(index_elements=list(keys)), rows)


def upsert(
    conn: Connection,
    table: Table,
    rows: list[dict[str, Any]],
    keys: Sequence[str],
    update_columns: Iterable[str],
) -> None:
    """Insert rows or update ``update_columns`` of the existing ones."""
    if not rows:
        return
    stmt = dialect_insert(conn, table)
    cols = list(update_columns)
    stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_={c: stmt.excluded[c] for c in cols})
    conn.execute(stmt, rows)


def update_rows(
    conn: Connection,
    table: Table,
    key: str,
    rows: list[dict[str, Any]],
    guard: Any | None = None,
) -> int:
    """``UPDATE table SET … WHERE key = :key`` for every row (an executemany).

    Each row holds the key and the columns to set; all rows must set the same columns.
    ``guard`` is an extra WHERE clause (e.g. ``status = 'sending'``) that makes the
    update conditional, so a row another worker already moved is left alone.
    """
    if not rows:
        return 0
    columns = [c for c in rows[0] if c != key]
    stmt = update(table).where(table.c[key] == bindparam("_key")).values({c: bindparam(c) for c in columns})
    if guard is not None:
        stmt = stmt.where(guard)
    params = [{"_key": r[key], **{c: r[c] for c in columns}} for r in rows]
    result = conn.execute(stmt, params)
    return int(result.rowcount or 0)


def frame_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of ``df`` as driver-ready dicts, converted column by column (not value by value):
    missing values become None, timestamps Python datetimes, NumPy scalars Python ones."""
    columns: dict[str, np.ndarray] = {}
    for name in df.columns:
        col = df[name]
        missing = col.isna().to_numpy()
        if pd.api.types.is_datetime64_any_dtype(col.dtype):
            values = np.array(col.dt.to_pydatetime(), dtype=object)
        else:
            values = col.astype(object).to_numpy(copy=True)
        values[missing] = None
        columns[str(name)] = values
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]
