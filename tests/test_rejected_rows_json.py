"""Issue 11 item 3: ``rejected_invoices.row`` is valid JSON with missing values as ``null``
— ``json_valid(row)`` on SQLite, ``row::jsonb`` on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dispatch.stages.extract_invoices import _raw_text

from tests.builders import World, open_world


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


def test_rejected_rows_are_valid_json_with_nulls(w: World) -> None:
    w.org().plan("p1").customer("c1", plan="p1").load_config()
    w.raw_invoice(  # no issue date, no due date, no PDF, no total: rejected, NULLs everywhere
        invoice_id="i_bad", org_id="acme", customer_id="c1", number="N1", issue_date=None,
        due_date=None, currency="EUR", total_amount=None, status="open", pdf_path=None,
    )  # fmt: skip
    w.raw_invoice(
        invoice_id="i_neg", org_id="acme", customer_id="c1", number="N2", issue_date="2026-12-01",
        due_date=None, currency="EUR", total_amount="-5.00", status="open", pdf_path=None,
    )  # fmt: skip
    w.run("2026-12-02T05:00Z")
    rows = w.rows("SELECT invoice_id, row FROM rejected_invoices ORDER BY invoice_id")
    assert [r["invoice_id"] for r in rows] == ["i_bad", "i_neg"]
    if w.backend == "sqlite":
        assert w.rows("SELECT json_valid(row) AS ok FROM rejected_invoices") == [{"ok": 1}, {"ok": 1}]
        nulls = w.rows("SELECT json_type(row, '$.due_date') AS t FROM rejected_invoices")
    else:
        nulls = w.rows("SELECT jsonb_typeof(row::jsonb -> 'due_date') AS t FROM rejected_invoices")
    assert [n["t"] for n in nulls] == ["null", "null"]
    parsed = {r["invoice_id"]: json.loads(r["row"]) for r in rows}
    assert parsed["i_bad"]["total_amount"] is None and parsed["i_bad"]["issue_date"] is None
    assert "NaN" not in rows[0]["row"]


def test_non_finite_numbers_never_make_invalid_json() -> None:
    text = _raw_text({"a": float("nan"), "b": float("inf"), "c": 1.5, "d": None})
    assert json.loads(text) == {"a": None, "b": "inf", "c": 1.5, "d": None}
