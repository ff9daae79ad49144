"""Reads from the accounting system through the queries in ``sql/`` (read-only).

The queries are files so that a deployment can adapt them to its own accounting schema
without touching code; each must keep the columns of CONTRACT §2.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from functools import cache

import pandas as pd
from sqlalchemy import Engine, bindparam, text

from dispatch.db.bulk import chunks
from dispatch.paths import SQL_DIR, resolve


@cache
def sql_text(name: str) -> str:
    return (resolve(SQL_DIR) / name).read_text(encoding="utf-8")


def _instant(engine: Engine, value: dt.datetime) -> object:
    """Bind an instant the way the accounting database stores it (naive UTC)."""
    naive = value.astimezone(dt.UTC).replace(tzinfo=None)
    if engine.dialect.name == "sqlite":
        return naive.strftime("%Y-%m-%d %H:%M:%S.%f")
    return naive


def read_changed_invoices(engine: Engine, since: dt.datetime, until: dt.datetime) -> pd.DataFrame:
    """Invoices whose ``updated_at`` falls in [since, until], as raw rows (not validated)."""
    stmt = text(sql_text("extract_invoices.sql"))
    with engine.connect() as conn:
        return pd.read_sql(
            stmt, conn, params={"since": _instant(engine, since), "until": _instant(engine, until)}
        )


def read_customers(engine: Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(text(sql_text("extract_customers.sql")), conn)


def _read_in(engine: Engine, name: str, param: str, ids: Sequence[str]) -> pd.DataFrame:
    stmt = text(sql_text(name)).bindparams(bindparam(param, expanding=True))
    frames = []
    with engine.connect() as conn:
        for part in chunks(list(ids)):
            frames.append(pd.read_sql(stmt, conn, params={param: list(part)}))
    if not frames:
        with engine.connect() as conn:
            return pd.read_sql(stmt, conn, params={param: ["\x00none"]})
    return pd.concat(frames, ignore_index=True)


def read_contacts(engine: Engine, customer_ids: Sequence[str]) -> pd.DataFrame:
    return _read_in(engine, "contacts_for_customers.sql", "customer_ids", sorted(set(customer_ids)))


def recheck_invoices(engine: Engine, invoice_ids: Sequence[str]) -> pd.DataFrame:
    return _read_in(engine, "recheck_invoices.sql", "invoice_ids", list(invoice_ids))
