"""One bad source row never stops a run (SPEC B6, B2), end to end on SQLite and PostgreSQL.

Hostile accounting rows: dates outside the window the scheduler can compute, amounts that
are not finite or do not fit ``NUMERIC(14,2)``, customer rows without an organization or
repeated by an adapted query, NULL keys, invoices repeated by an adapted extract or re-check
query, and ``updated_at`` values that place a row in no extract window. Each is rejected into
``rejected_invoices`` with a named reason (or handled, for exact copies), the other invoices
of the same run are imported and sent, and the run's counts add up.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from dispatch.storage import source

from tests.builders import World, day, instant, open_world

AT = "2026-12-02T05:00Z"
UPDATED = "2026-12-02T04:30Z"


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        world.org().plan("p_mail").customer("c1", plan="p_mail").load_config()
        world.invoice("i_ok", "c1", number="OK-1", updated=UPDATED)
        yield world


def rejected(w: World) -> dict[str, str]:
    return {r["invoice_id"]: r["reason"] for r in w.rows("SELECT invoice_id, reason FROM rejected_invoices")}


def row(w: World, invoice_id: str, **changes: object) -> None:
    values: dict[str, object] = {
        "invoice_id": invoice_id,
        "org_id": "acme",
        "customer_id": "c1",
        "number": f"N-{invoice_id}",
        "issue_date": "2026-12-02",
        "due_date": "2027-01-01",
        "currency": "EUR",
        "total_amount": "10.00",
        "status": "open",
        "updated_at": UPDATED,
    }
    values.update(changes)
    w.raw_invoice(**values)


def adapt_query(monkeypatch: pytest.MonkeyPatch, name: str, rewrite: Callable[[str], str]) -> None:
    """Run ``sql/NAME`` as a deployment adapted it (the queries are the user's to change)."""
    original = source.sql_text

    def patched(query: str) -> str:
        text = original(query)
        return rewrite(text) if query == name else text

    monkeypatch.setattr(source, "sql_text", patched)


def assert_counts_add_up(w: World, report, *, rejected_rows: int, run_rows: int | None = None) -> None:  # type: ignore[no-untyped-def]
    """SPEC B2: every imported invoice in exactly one outcome; rejected ones counted apart
    (``totals`` counts rejected invoices, the run's own count its rejected rows)."""
    totals = report.counts["totals"]
    outcomes = ("sent", "manual", "ignored_or_marked_sent", "cancelled", "scheduled")
    outcomes += ("without_template", "not_required")
    imported = w.rows("SELECT count(*) AS n FROM invoices")[0]["n"]
    assert totals["imported"] == imported == sum(totals[k] for k in outcomes)
    assert totals["rejected"] == rejected_rows
    assert report.counts["run"]["rejected"] == (rejected_rows if run_rows is None else run_rows)


# --- bounded values --------------------------------------------------------------------------


def test_dates_outside_the_window_are_rejected_and_never_scheduled_in_the_past(w: World) -> None:
    row(w, "i_year_typo", issue_date="2926-12-01", due_date="2926-12-31")
    row(w, "i_max_date", issue_date="9999-12-31", due_date=None)
    row(w, "i_before_epoch", issue_date="1969-12-31")
    row(w, "i_due_far", due_date="9999-12-31")
    row(w, "i_due_ancient", due_date="0001-01-01")
    row(w, "i_last_day", issue_date="2031-12-02", due_date="2031-12-02")  # as-of + 5 years: fine
    row(w, "i_epoch", issue_date="1970-01-01", due_date="1970-01-31")  # the first day: fine

    report = w.run(AT)

    assert rejected(w) == {
        "i_year_typo": "issue_date_out_of_range",
        "i_max_date": "issue_date_out_of_range",
        "i_before_epoch": "issue_date_out_of_range",
        "i_due_far": "due_date_out_of_range",
        "i_due_ancient": "due_date_out_of_range",
    }
    assert w.action("i_ok")["status"] == "sent"
    assert w.action("i_epoch")["status"] == "sent"
    late = w.action("i_last_day")
    assert late["status"] == "scheduled"
    for action in w.actions():  # nothing wrapped around into the past
        assert action["scheduled_for"] >= instant(
            w.invoice_row(action["invoice_id"])["issue_date"].isoformat()
        )
    assert_counts_add_up(w, report, rejected_rows=5)


def _unconstrained_amounts(w: World) -> None:
    """A real accounting system may hold any NUMERIC, infinities included (PostgreSQL 14+)."""
    if w.backend == "postgresql":
        with w.accounting.begin() as conn:
            conn.execute(sa.text("ALTER TABLE invoices ALTER COLUMN total_amount TYPE NUMERIC"))


def test_amounts_must_be_finite_and_fit_numeric_14_2_and_are_rounded_to_the_cent(w: World) -> None:
    _unconstrained_amounts(w)
    row(w, "i_inf", total_amount="Infinity" if w.backend == "postgresql" else "inf")
    row(w, "i_minus_inf", total_amount="-Infinity" if w.backend == "postgresql" else "-inf")
    row(w, "i_nan", total_amount="NaN")
    row(w, "i_too_big", total_amount="1000000000000")
    row(w, "i_rounds_too_big", total_amount="999999999999.999")
    row(w, "i_too_small", total_amount="-1000000000000")
    row(w, "i_largest", total_amount="999999999999.99")
    row(w, "i_cents", total_amount="12.3456")

    report = w.run(AT)

    assert rejected(w) == {
        "i_inf": "invalid_total",
        "i_minus_inf": "invalid_total",
        "i_nan": "invalid_total",
        "i_too_big": "total_out_of_range",
        "i_rounds_too_big": "total_out_of_range",
        "i_too_small": "total_out_of_range",
    }
    assert float(w.invoice_row("i_largest")["total_amount"]) == pytest.approx(999999999999.99, abs=0.001)
    assert float(w.invoice_row("i_cents")["total_amount"]) == pytest.approx(12.35)
    assert {a["invoice_id"]: a["status"] for a in w.actions()} == dict.fromkeys(
        ("i_ok", "i_largest", "i_cents"), "sent"
    )
    assert_counts_add_up(w, report, rejected_rows=6)


# --- per-row isolation: customers and keys -----------------------------------------------------


def test_a_customer_row_without_org_stops_nothing_and_its_invoices_are_rejected(w: World) -> None:
    w.customer("c_no_org", org=None)  # type: ignore[arg-type]
    w.customer("c2", plan="p_mail").load_config()
    w.invoice("i_c2", "c2", updated=UPDATED)
    row(w, "i_of_no_org", customer_id="c_no_org")
    row(w, "i_no_customer", customer_id=None)
    row(w, "i_blank_customer", customer_id="  ")

    report = w.run(AT)

    assert rejected(w) == {
        "i_of_no_org": "invalid_customer",
        "i_no_customer": "missing_customer_id",
        "i_blank_customer": "missing_customer_id",
    }
    assert {a["invoice_id"]: a["status"] for a in w.actions()} == {"i_ok": "sent", "i_c2": "sent"}
    assert {r["customer_id"] for r in w.rows("SELECT customer_id FROM customers")} == {"c1", "c2"}
    assert_counts_add_up(w, report, rejected_rows=3)


def test_customer_rows_repeated_by_an_adapted_query_are_used_once_or_refused_when_they_disagree(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w.customer("c_twice", plan="p_mail").customer("c_torn", plan="p_mail").load_config()
    w.invoice("i_twice", "c_twice", updated=UPDATED)
    w.invoice("i_torn", "c_torn", updated=UPDATED)
    adapt_query(
        monkeypatch,
        "extract_customers.sql",
        lambda q: (
            f"{q}\nUNION ALL SELECT customer_id, org_id, name, parent_customer_id, language FROM customers"
            " WHERE customer_id = 'c_twice'"
            "\nUNION ALL SELECT customer_id, org_id, 'Somebody else', NULL, 'fr' FROM customers"
            " WHERE customer_id = 'c_torn'"
            "\nUNION ALL SELECT NULL, 'acme', 'No id', NULL, NULL FROM customers WHERE customer_id = 'c1'"
        ),
    )

    report = w.run(AT)

    assert rejected(w) == {"i_torn": "duplicate_customer"}
    assert {a["invoice_id"]: a["status"] for a in w.actions()} == {"i_ok": "sent", "i_twice": "sent"}
    assert {r["customer_id"] for r in w.rows("SELECT customer_id FROM customers")} == {"c1", "c_twice"}
    assert_counts_add_up(w, report, rejected_rows=1)


def test_invoices_repeated_by_adapted_extract_and_recheck_queries_are_sent_once(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extract joined to line items yields exact copies of a row (harmless: one invoice);
    copies that disagree cannot be told apart and are refused; a NULL id is refused; the
    re-check joined the same way sends the invoice once, and a void copy cancels it."""
    w.invoice("i_fanned", "c1", updated=UPDATED)
    w.invoice("i_torn", "c1", updated=UPDATED)
    w.invoice("i_void_copy", "c1", updated=UPDATED)
    columns = (
        "invoice_id, org_id, customer_id, number, issue_date, due_date, currency, total_amount, status,"
        " pdf_path, updated_at"
    )
    adapt_query(
        monkeypatch,
        "extract_invoices.sql",
        lambda q: (
            f"SELECT * FROM ({q.split('ORDER BY')[0]}"
            f"\nUNION ALL SELECT {columns} FROM invoices"
            " WHERE invoice_id IN ('i_fanned', 'i_ok', 'i_void_copy')"
            f"\nUNION ALL SELECT {columns.replace('number', 'number || {sep}-B{sep}'.format(sep=chr(39)))}"
            " FROM invoices WHERE invoice_id = 'i_torn'"
            f"\nUNION ALL SELECT NULL, {columns.split(', ', 1)[1]} FROM invoices WHERE invoice_id = 'i_ok'"
            ") AS adapted ORDER BY invoice_id"
        ),
    )
    adapt_query(
        monkeypatch,
        "recheck_invoices.sql",
        lambda q: (
            f"{q}\nUNION ALL SELECT invoice_id, status, pdf_path FROM invoices"
            " WHERE invoice_id IN :invoice_ids"
            "\nUNION ALL SELECT invoice_id, 'void', pdf_path FROM invoices"
            " WHERE invoice_id IN :invoice_ids AND invoice_id = 'i_void_copy'"
        ),
    )

    report = w.run(AT)

    reasons = w.rows("SELECT invoice_id, reason FROM rejected_invoices ORDER BY reason, invoice_id")
    assert reasons == [
        {"invoice_id": "i_torn", "reason": "duplicate_invoice_id"},
        {"invoice_id": "i_torn", "reason": "duplicate_invoice_id"},
        {"invoice_id": None, "reason": "missing_invoice_id"},
    ]
    assert {a["invoice_id"]: a["status"] for a in w.actions()} == {
        "i_ok": "sent",
        "i_fanned": "sent",
        "i_void_copy": "cancelled",
    }
    assert len(w.outbox_files()) == 2
    # invoices: i_torn once, the row without id once; rows: both copies of i_torn and that row
    assert_counts_add_up(w, report, rejected_rows=2, run_rows=3)


# --- rows no extract window can hold --------------------------------------------------------------


def test_rows_with_an_unusable_updated_at_are_reported_once_not_silently_skipped(w: World) -> None:
    with w.accounting.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO invoices (invoice_id, org_id, customer_id, number, issue_date, due_date,"
                " currency, total_amount, status, updated_at) VALUES"
                " ('i_null_updated', 'acme', 'c1', 'NU-1', :d, :d, 'EUR', 10, 'open', NULL)"
            ),
            {"d": day("2026-12-02")},
        )
    row(w, "i_before_1970", updated_at="1969-07-20T20:17Z")
    expected = {"i_null_updated": "missing_updated_at", "i_before_1970": "invalid_updated_at"}
    if w.backend == "sqlite":  # a typed timestamp column cannot hold these
        with w.accounting.begin() as conn:
            for iid, value in (("i_garbage", "yesterday"), ("i_in_window_garbage", "2026-12-02 04:xx")):
                conn.execute(
                    sa.text(
                        "INSERT INTO invoices (invoice_id, org_id, customer_id, number, issue_date,"
                        " currency, total_amount, status, updated_at)"
                        " VALUES (:i, 'acme', 'c1', :i, '2026-12-02', 'EUR', 10, 'open', :u)"
                    ),
                    {"i": iid, "u": value},
                )
        expected |= {"i_garbage": "invalid_updated_at", "i_in_window_garbage": "invalid_updated_at"}

    report = w.run(AT)

    assert rejected(w) == expected
    assert w.action("i_ok")["status"] == "sent"
    assert report.stages["extract"]["rejected_by_reason"].get("missing_updated_at") == 1
    assert_counts_add_up(w, report, rejected_rows=len(expected))
    raw = json.loads(
        w.rows("SELECT \"row\" FROM rejected_invoices WHERE invoice_id = 'i_null_updated'")[0]["row"]
    )
    assert raw["number"] == "NU-1" and raw["updated_at"] is None

    again = w.run("2026-12-03T05:00Z")  # reported once: the next run finds nothing new
    assert again.counts["run"]["rejected"] == 0
    assert again.counts["totals"]["rejected"] == len(expected)
    assert len(w.rows("SELECT reason FROM rejected_invoices")) == len(expected)


def test_a_pdf_path_with_a_nul_is_rejected_at_import_and_stops_nothing(w: World) -> None:
    if w.backend != "sqlite":
        pytest.skip("a PostgreSQL accounting source cannot hold a NUL character")
    row(w, "i_nul_pdf", pdf_path="inv\x00.pdf")

    report = w.run(AT)

    assert rejected(w) == {"i_nul_pdf": "invalid_pdf_path"}
    assert w.action("i_ok")["status"] == "sent"
    assert_counts_add_up(w, report, rejected_rows=1)
