"""The import rules as pure functions: every combination of hostile values is either refused
with a named reason or yields values every later stage can compute with (SPEC B6)."""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd
from dispatch.rules import import_rules as rules
from dispatch.stages.extract_invoices import validate_invoices
from hypothesis import given, settings
from hypothesis import strategies as st

AS_OF = dt.datetime(2026, 12, 2, 5, tzinfo=dt.UTC)
REASONS = {
    "missing_invoice_id",
    "invalid_invoice_id",
    "duplicate_invoice_id",
    "unknown_org",
    "missing_number",
    "invalid_number",
    "missing_issue_date",
    "issue_date_out_of_range",
    "invalid_issue_date",
    "due_date_out_of_range",
    "invalid_due_date",
    "missing_customer_id",
    "duplicate_customer",
    "invalid_customer",
    "unknown_customer",
    "customer_org_mismatch",
    "bad_currency",
    "invalid_total",
    "total_out_of_range",
    "negative_total",
    "bad_status",
    "missing_updated_at",
    "invalid_updated_at",
    "duplicate_number",
}

dates = st.one_of(
    st.none(),
    st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31)),
    st.dates().map(lambda d: d.isoformat()),
    st.sampled_from(["2026-13-45", "tomorrow", "10000-01-01", "", "2026-12-02 00:00:00"]),
)
amounts = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=False, allow_infinity=True, places=4),
    st.sampled_from(["inf", "-inf", "NaN", "12,50", "1e12", "999999999999.99", "0.005"]),
)
invoice_rows = st.fixed_dictionaries(
    {
        "invoice_id": st.sampled_from([None, "", "  ", "i1", "i2", "i3", "x" * 65, "i\x00"]),
        "org_id": st.sampled_from(["acme", "beta", None]),
        "customer_id": st.sampled_from(["c1", "c_no_org", "c_torn", "c_beta", "c_ghost", None, " "]),
        "number": st.sampled_from(["N-1", "N-2", None, " ", "N\x00"]),
        "issue_date": dates,
        "due_date": dates,
        "currency": st.sampled_from(["EUR", "eur", "EURO", None, "XXX1"]),
        "total_amount": amounts,
        "status": st.sampled_from(["open", "paid", "void", "draft", None]),
        "pdf_path": st.none(),
        "updated_at": st.sampled_from(["2026-12-02 04:30:00", None, "yesterday", "1969-07-20 20:17:00"]),
    }
)

COLUMNS = ["customer_id", "org_id", "name", "parent_customer_id", "language"]
CUSTOMERS = pd.DataFrame(
    [
        ("c1", "acme", "C1", None, None),
        ("c_no_org", None, "X", None, "en"),
        ("c_torn", "acme", "A", None, "en"),
        ("c_torn", "acme", "B", None, "en"),
        ("c_beta", "beta", "B", None, "x" * 30),
        (None, "acme", "?", None, None),
    ],
    columns=COLUMNS,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(invoice_rows, min_size=1, max_size=8))
def test_every_row_is_refused_with_a_named_reason_or_is_bounded(rows: list[dict]) -> None:
    raw = pd.DataFrame(rows)
    customers = rules.check_customers(CUSTOMERS)
    valid, rejected = validate_invoices(raw, customers, {"acme", "beta"}, AS_OF)

    assert set(rejected["reason"]) <= REASONS
    assert len(valid) + len(rejected) <= len(raw)  # exact copies are one row
    assert not set(valid.index) & set(rejected.index)
    low, high = rules.date_window(AS_OF)
    for r in valid.itertuples():
        assert low <= r.issue_date_p.date() <= high
        assert pd.isna(r.due_date_p) or low <= r.due_date_p.date() <= high
        assert math.isfinite(r.total_p) and 0 <= round(r.total_p, 2) < rules.AMOUNT_LIMIT
        assert r.customer_id == "c1" and r.org_id == "acme"  # the one usable customer of acme
        assert r.currency == "EUR" and r.status in rules.ACCOUNTING_STATUSES
    assert valid["invoice_id"].is_unique


CLEAN = {
    "invoice_id": "i_clean",
    "org_id": "acme",
    "customer_id": "c1",
    "number": "N-clean",
    "issue_date": "2026-12-01",
    "due_date": "2026-12-31",
    "currency": "EUR",
    "total_amount": "12.50",
    "status": "open",
    "pdf_path": None,
    "updated_at": "2026-12-02 04:30:00",
}


@settings(max_examples=200, deadline=None)
@given(st.lists(invoice_rows, max_size=8), st.integers(min_value=0, max_value=8))
def test_hostile_rows_next_to_a_clean_one_never_reject_it(rows: list[dict], at: int) -> None:
    rows.insert(min(at, len(rows)), CLEAN)
    raw = pd.DataFrame(rows)
    valid, rejected = validate_invoices(raw, rules.check_customers(CUSTOMERS), {"acme", "beta"}, AS_OF)
    assert "i_clean" in set(valid["invoice_id"]), rejected[["invoice_id", "reason"]]
    assert valid.set_index("invoice_id").loc["i_clean", "total_p"] == 12.5


def test_the_date_window_ends_five_years_after_the_as_of_day_even_from_a_leap_day() -> None:
    assert rules.date_window(AS_OF) == (dt.date(1970, 1, 1), dt.date(2031, 12, 2))
    leap = dt.datetime(2028, 2, 29, 23, tzinfo=dt.UTC)
    assert rules.date_window(leap) == (dt.date(1970, 1, 1), dt.date(2033, 2, 28))


def test_customer_rows_exact_copies_are_one_and_disagreeing_copies_are_refused() -> None:
    checked = rules.check_customers(pd.concat([CUSTOMERS, CUSTOMERS.iloc[[0]]]))
    assert sorted(checked.usable["customer_id"]) == ["c1", "c_beta"]
    assert checked.refused.to_dict() == {"c_no_org": "invalid_customer", "c_torn": "duplicate_customer"}
    assert checked.usable.set_index("customer_id")["language"].to_dict() == {"c1": "en", "c_beta": "en"}


def test_ids_an_adapted_query_returns_as_numbers_match_customers_as_text() -> None:
    raw = pd.DataFrame(
        [
            {
                "invoice_id": 17,
                "org_id": "acme",
                "customer_id": 1,
                "number": "N-17",
                "issue_date": "2026-12-01",
                "due_date": None,
                "currency": "EUR",
                "total_amount": 10,
                "status": "open",
                "pdf_path": None,
                "updated_at": "2026-12-02 04:30:00",
            }
        ]
    )
    customers = rules.check_customers(
        pd.DataFrame([(1, "acme", "One", None, None)], columns=rules.CUSTOMER_COLUMNS)
    )
    valid, rejected = validate_invoices(raw, customers, {"acme"}, AS_OF)
    assert rejected.empty and len(valid) == 1
