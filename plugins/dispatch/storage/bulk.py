"""Set-based writes that work the same on SQLite and PostgreSQL, at each database's bulk speed.

Every stage writes whole columns at once through three functions — :func:`insert_ignore`,
:func:`upsert` and :func:`update_rows` — which take a list of dicts or a DataFrame. The
dialect is chosen here and nowhere else:

* PostgreSQL: the rows are streamed with ``COPY … FROM STDIN`` (psycopg's ``cursor.copy``)
  into a temporary table shaped like the target's columns, then ONE statement applies them:
  ``INSERT … SELECT … ON CONFLICT`` or ``UPDATE … FROM``. The text COPY format is written by
  pandas' C CSV writer column by column, so there is no per-row Python work and one round
  trip per call, whatever the number of rows (no page size to tune).
* SQLite: one ``executemany`` per call inside the caller's transaction (SQLite has no
  network round trip; its cost is the statement, not the call).

A handful of rows (fewer than :data:`COPY_MIN_ROWS`) take the executemany path on both
databases: a temporary table costs more round trips than it saves.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    JSON,
    Connection,
    Date,
    DateTime,
    Integer,
    Table,
    bindparam,
    column,
    insert,
    table,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

CHUNK = 900  # stays under SQLite's default limit of bound parameters per statement
#: Below this many rows a temporary table and a COPY cost more than an executemany.
COPY_MIN_ROWS = 200
#: PostgreSQL's text COPY spelling of NULL; real backslashes are escaped, so no value collides.
_NULL = "\\N"
_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))
_NEEDS_ESCAPE_RE = re.compile(r"[\\\t\n\r]")
_stage_names = itertools.count()

Rows = list[dict[str, Any]] | pd.DataFrame


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def dialect_insert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT construct, which knows ``on_conflict_do_*``."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"dialect {conn.dialect.name} is not supported")


# --- the dialect choice -----------------------------------------------------------------------


def _row_count(rows: Rows) -> int:
    return len(rows.index) if isinstance(rows, pd.DataFrame) else len(rows)


def _columns(rows: Rows) -> list[str]:
    if isinstance(rows, pd.DataFrame):
        return [str(c) for c in rows.columns]
    return list(rows[0])


def _uses_copy(conn: Connection, target: Table, rows: Rows) -> bool:
    """COPY on PostgreSQL for more than a handful of rows whose columns COPY can spell."""
    if conn.dialect.name != "postgresql" or _row_count(rows) < COPY_MIN_ROWS:
        return False
    return not any(isinstance(target.c[c].type, JSON) for c in _columns(rows))


def _as_records(rows: Rows) -> list[dict[str, Any]]:
    return frame_records(rows) if isinstance(rows, pd.DataFrame) else rows


# --- PostgreSQL: COPY into a temporary table ---------------------------------------------------


def _text_column(col: pd.Series, col_type: Any) -> np.ndarray:
    """One column as an object array of COPY text values, ``\\N`` for the missing ones,
    converted by NumPy or pandas on the whole column (no Python per value where avoidable)."""
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        # NumPy's C formatter, in UTC with an explicit offset: pandas' per-value formatting
        # of aware timestamps cost more than the COPY itself; a DATE column gets the day
        if getattr(col.dt, "tz", None) is not None:
            col = col.dt.tz_convert("UTC").dt.tz_localize(None)
        if isinstance(col_type, Date) and not isinstance(col_type, DateTime):
            stamps = np.datetime_as_string(col.to_numpy(dtype="datetime64[D]"), unit="D")
        else:
            values = col.to_numpy(dtype="datetime64[us]")
            stamps = np.char.add(np.datetime_as_string(values, unit="us"), "+00")
        out = stamps.astype(object)
        out[col.isna().to_numpy()] = _NULL
        return out
    if isinstance(col_type, Integer) and pd.api.types.is_float_dtype(col.dtype):
        col = col.astype("Int64")  # NaN made a float of an integer column: '3.0' is no integer
    missing = col.isna().to_numpy()
    if pd.api.types.is_bool_dtype(col.dtype):
        out = np.where(col.to_numpy(dtype=bool, na_value=False), "t", "f").astype(object)
    elif col.dtype == object or pd.api.types.is_string_dtype(col.dtype):
        values = col.to_numpy(dtype=object)
        kind = pd.api.types.infer_dtype(values, skipna=True)
        if kind == "boolean":
            out = np.where(values == True, "t", "f").astype(object)  # noqa: E712 (element-wise)
        elif kind in ("string", "empty"):
            out = values.copy()
        else:  # dates, decimals, mixed: str() of each value, as the driver would send it
            out = col.astype(str).to_numpy(dtype=object)
        present = out[~missing]
        # one search of the column joined, for the rare values COPY must escape: a search
        # per value cost more than writing the column
        if present.size and _NEEDS_ESCAPE_RE.search("".join(present.tolist())):
            escaped = pd.Series(present, dtype=object)
            for plain, replacement in _ESCAPES:
                escaped = escaped.str.replace(plain, replacement, regex=False)
            out[~missing] = escaped.to_numpy(dtype=object)
    else:  # numbers: their shortest repr, as the CSV writer wrote them
        out = col.astype(str).to_numpy(dtype=object)
    out[missing] = _NULL
    return out


def _copy_text(target: Table, frame: pd.DataFrame) -> str:
    """``frame`` in PostgreSQL's text COPY format, built column by column (no per-row Python:
    the rows are joined by ``str.join`` mapped over the zipped columns, in C)."""
    if frame.empty:
        return ""
    arrays = [_text_column(frame[name], target.c[str(name)].type) for name in frame.columns]
    return "\n".join(map("\t".join, zip(*arrays, strict=True))) + "\n"


def _copy_into(conn: Connection, name: str, target: Table, frame: pd.DataFrame) -> None:
    """``COPY name (columns of frame) FROM STDIN``, in 1 MiB writes."""
    quoted = ", ".join(f'"{c}"' for c in frame.columns)
    payload = memoryview(_copy_text(target, frame).encode("utf-8"))
    dbapi = conn.connection.driver_connection
    with dbapi.cursor() as cur:  # type: ignore[union-attr]
        with cur.copy(f'COPY "{name}" ({quoted}) FROM STDIN') as copy:
            for start in range(0, len(payload), 1 << 20):
                copy.write(payload[start : start + (1 << 20)])


def _stage(conn: Connection, target: Table, rows: Rows) -> Any:
    """COPY ``rows`` into a fresh temporary table with the target's column types; returns a
    table construct naming it (dropped at commit, or by :func:`_unstage`)."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame.from_records(rows)
    names = [str(c) for c in frame.columns]
    stage_name = f"_bulk_{target.name}_{next(_stage_names)}"
    quoted = ", ".join(f'"{c}"' for c in names)
    conn.exec_driver_sql(
        f'CREATE TEMPORARY TABLE "{stage_name}" ON COMMIT DROP AS '
        f'SELECT {quoted} FROM "{target.name}" WITH NO DATA'
    )
    _copy_into(conn, stage_name, target, frame)
    return table(stage_name, *[column(c, target.c[c].type) for c in names])


def _unstage(conn: Connection, stage: Any) -> None:
    conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{stage.name}"')


# --- the three writes --------------------------------------------------------------------------


def insert_ignore(
    conn: Connection,
    table: Table,
    rows: Rows,
    keys: Sequence[str],
    *,
    returning: Sequence[str] | None = None,
) -> list[tuple] | None:
    """Insert rows, skipping those whose ``keys`` already exist (idempotent re-runs).

    With ``returning``, returns those columns of the rows actually inserted (not of the
    skipped ones), e.g. to log an event for each new row and none for a re-run's."""
    if _row_count(rows) == 0:
        return [] if returning else None
    ret_cols = [table.c[c] for c in returning or ()]
    if _uses_copy(conn, table, rows):
        stage = _stage(conn, table, rows)
        names = [c.name for c in stage.columns]
        stmt = (
            postgresql.insert(table)
            .from_select(names, stage.select())
            .on_conflict_do_nothing(index_elements=list(keys))
        )
        result = conn.execute(stmt.returning(*ret_cols) if ret_cols else stmt)
        out = [tuple(r) for r in result.all()] if ret_cols else None
        _unstage(conn, stage)
        return out
    ignoring = dialect_insert(conn, table).on_conflict_do_nothing(index_elements=list(keys))
    if ret_cols:
        return [tuple(r) for r in conn.execute(ignoring.returning(*ret_cols), _as_records(rows)).all()]
    conn.execute(ignoring, _as_records(rows))
    return None


def upsert(
    conn: Connection,
    table: Table,
    rows: Rows,
    keys: Sequence[str],
    update_columns: Iterable[str],
) -> None:
    """Insert rows or update ``update_columns`` of the existing ones (the last row of a
    key wins, as it would row by row)."""
    if _row_count(rows) == 0:
        return
    cols = list(update_columns)
    if _uses_copy(conn, table, rows):
        stage = _stage(conn, table, rows)
        names = [c.name for c in stage.columns]
        key_list = ", ".join(f'"{k}"' for k in keys)
        # one row per key (the last staged), else ON CONFLICT would touch a row twice
        last = (
            f"SELECT DISTINCT ON ({key_list}) {', '.join(chr(34) + n + chr(34) for n in names)} "
            f'FROM "{stage.name}" ORDER BY {key_list}, ctid DESC'
        )
        sets = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in cols)
        action = f"DO UPDATE SET {sets}" if cols else "DO NOTHING"
        conn.exec_driver_sql(
            f'INSERT INTO "{table.name}" ({", ".join(chr(34) + n + chr(34) for n in names)}) '
            f"{last} ON CONFLICT ({key_list}) {action}"
        )
        _unstage(conn, stage)
        return
    stmt = dialect_insert(conn, table)
    stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_={c: stmt.excluded[c] for c in cols})
    conn.execute(stmt, _as_records(rows))


def update_rows(
    conn: Connection,
    table: Table,
    key: str,
    rows: Rows,
    guard: Any | None = None,
) -> int:
    """``UPDATE table SET … WHERE key = :key`` for every row; returns the rows changed.

    Each row holds the key and the columns to set; all rows must set the same columns.
    ``guard`` is an extra WHERE clause (e.g. ``status = 'sending'``) that makes the
    update conditional, so a row another worker already moved is left alone.
    """
    if _row_count(rows) == 0:
        return 0
    columns = [c for c in _columns(rows) if c != key]
    if _uses_copy(conn, table, rows):
        stage = _stage(conn, table, rows)
        stmt = update(table).where(table.c[key] == stage.c[key]).values({c: stage.c[c] for c in columns})
        if guard is not None:
            stmt = stmt.where(guard)
        n = int(conn.execute(stmt).rowcount or 0)
        _unstage(conn, stage)
        return n
    stmt = update(table).where(table.c[key] == bindparam("_key")).values({c: bindparam(c) for c in columns})
    if guard is not None:
        stmt = stmt.where(guard)
    params = [{"_key": r[key], **{c: r[c] for c in columns}} for r in _as_records(rows)]
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


def append_rows(conn: Connection, table: Table, rows: Rows) -> int:
    """Plain INSERT of new rows (an append-only log: no key to conflict on); returns the count.

    On PostgreSQL the rows are COPYed straight into ``table``: nothing to merge, so no
    temporary table."""
    n = _row_count(rows)
    if n == 0:
        return 0
    if _uses_copy(conn, table, rows):
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame.from_records(rows)
        _copy_into(conn, table.name, table, frame)
        return n
    conn.execute(insert(table), _as_records(rows))
    return n
