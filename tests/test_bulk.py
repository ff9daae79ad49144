"""The bulk writers: the same rows come back from both databases, whatever their size.

Sizes below and above ``COPY_MIN_ROWS`` exercise both paths on PostgreSQL (executemany and
COPY into a temporary table); the texts hold what COPY's text format must escape.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pandas as pd
import pytest
import sqlalchemy as sa
from dispatch.storage import bulk
from dispatch.storage.engine import make_engine
from dispatch.storage.migrate import upgrade
from dispatch.storage.schema import customers, invoice_actions, invoices

UTC = dt.UTC
TRICKY = ["plain", "tab\there", "new\nline", "cr\rhere", "back\\slash", "\\N", "", 'quote"d', "Zoë ✓"]


@pytest.fixture
def engine(db_urls: dict[str, str]) -> sa.Engine:
    eng = make_engine(db_urls["dispatch"])
    upgrade(eng)
    yield eng
    eng.dispose()


def _customers(n: int, suffix: str = "") -> list[dict]:
    return [
        {
            "customer_id": f"c{i:05d}",
            "org_id": "acme",
            "name": TRICKY[i % len(TRICKY)] + suffix,
            "parent_customer_id": None if i % 3 else f"p{i}",
            "language": "fr" if i % 2 else "en",
        }
        for i in range(n)
    ]


def _read(engine: sa.Engine, table: sa.Table, key: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c[key]))]


@pytest.mark.parametrize("n", [3, bulk.COPY_MIN_ROWS + 7])
def test_insert_ignore_keeps_existing_rows_and_returns_only_new_ones(engine, n):
    first = _customers(n)
    with engine.begin() as conn:
        assert bulk.insert_ignore(conn, customers, first[: n // 2], ["customer_id"]) is None
    again = _customers(n, suffix=" (second)")
    with engine.begin() as conn:
        created = bulk.insert_ignore(conn, customers, again, ["customer_id"], returning=["customer_id"])
    assert sorted(c for (c,) in created) == [r["customer_id"] for r in again[n // 2 :]]
    got = _read(engine, customers, "customer_id")
    assert got == first[: n // 2] + again[n // 2 :]


@pytest.mark.parametrize("n", [4, bulk.COPY_MIN_ROWS + 1])
def test_upsert_updates_only_the_named_columns_and_the_last_row_of_a_key_wins(engine, n):
    with engine.begin() as conn:
        bulk.upsert(conn, customers, _customers(n), ["customer_id"], ["name"])
    changed = [dict(r, name=r["name"] + "!", language="de") for r in _customers(n)]
    twice = [*changed, dict(changed[0], name="last one")]
    with engine.begin() as conn:
        bulk.upsert(conn, customers, pd.DataFrame(twice), ["customer_id"], ["name"])
    got = _read(engine, customers, "customer_id")
    expected = [dict(r, language=o["language"]) for r, o in zip(changed, _customers(n), strict=True)]
    expected[0]["name"] = "last one"
    assert got == expected


def _invoice_rows(n: int) -> list[dict]:
    at = dt.datetime(2026, 12, 2, 5, 0, tzinfo=UTC)
    return [
        {
            "invoice_id": f"i{i:05d}",
            "org_id": "acme",
            "customer_id": f"c{i % 7}",
            "number": f"F-{i}",
            "issue_date": dt.date(2026, 12, 1) - dt.timedelta(days=i % 40),
            "due_date": None if i % 4 == 0 else dt.date(2027, 1, 1),
            "currency": "EUR",
            "total_amount": Decimal(f"{i}.{i % 100:02d}"),
            "accounting_status": "open",
            "pdf_path": None,
            "source_updated_at": at - dt.timedelta(minutes=i),
            "first_seen_at": at,
            "first_seen_run_id": "r1",
            "sending_status": "to_send",
            "sent_at": None,
            "sent_how": None,
        }
        for i in range(n)
    ]


def _action_rows(inv: list[dict]) -> list[dict]:
    at = dt.datetime(2026, 12, 2, 5, 0, tzinfo=UTC)
    return [
        {
            "action_id": "a" + r["invoice_id"],
            "invoice_id": r["invoice_id"],
            "org_id": "acme",
            "plan_id": "p",
            "template_id": "t",
            "channel": "email",
            "automatic": i % 2 == 0,
            "owner_user_id": None,
            "scheduled_for": at + dt.timedelta(hours=i % 30),
            "scheduled_local_date": dt.date(2026, 12, 2),
            "status": "scheduled",
            "attempts": i % 3,
            "created_at": at,
            "updated_at": at,
        }
        for i, r in enumerate(inv)
    ]


@pytest.mark.parametrize("n", [5, bulk.COPY_MIN_ROWS * 2])
def test_dates_instants_numbers_and_booleans_round_trip(engine, n):
    inv = _invoice_rows(n)
    acts = _action_rows(inv)
    with engine.begin() as conn:
        bulk.insert_ignore(conn, invoices, inv, ["invoice_id"])
        bulk.insert_ignore(conn, invoice_actions, pd.DataFrame(acts), ["invoice_id"])
    got = _read(engine, invoices, "invoice_id")
    assert got == inv
    got_actions = _read(engine, invoice_actions, "action_id")
    for row, want in zip(got_actions, acts, strict=True):
        assert {k: row[k] for k in want} == want


@pytest.mark.parametrize("n", [6, bulk.COPY_MIN_ROWS + 50])
def test_update_rows_honours_its_guard_and_counts_what_changed(engine, n):
    inv = _invoice_rows(n)
    with engine.begin() as conn:
        bulk.insert_ignore(conn, invoices, inv, ["invoice_id"])
        bulk.insert_ignore(conn, invoice_actions, _action_rows(inv), ["invoice_id"])
        conn.execute(
            sa.update(invoice_actions)
            .where(invoice_actions.c.action_id == "a" + inv[0]["invoice_id"])
            .values(status="sent")
        )
    later = dt.datetime(2026, 12, 3, 5, 0, tzinfo=UTC)
    change = {"status": "manual", "manual_reason": "no_contact", "updated_at": later}
    rows = [{"action_id": "a" + r["invoice_id"], **change} for r in inv]
    rows.append({"action_id": "a-missing", **change})
    with engine.begin() as conn:
        n_changed = bulk.update_rows(
            conn, invoice_actions, "action_id", rows, guard=invoice_actions.c.status == "scheduled"
        )
    assert n_changed == n - 1
    got = {r["action_id"]: r for r in _read(engine, invoice_actions, "action_id")}
    assert got["a" + inv[0]["invoice_id"]]["status"] == "sent"
    assert all(got["a" + r["invoice_id"]]["status"] == "manual" for r in inv[1:])
    assert all(got["a" + r["invoice_id"]]["updated_at"] == later for r in inv[1:])
