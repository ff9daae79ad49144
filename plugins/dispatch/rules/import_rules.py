"""The import rules (SPEC B6): which source rows the dispatch database can hold, and why not.

Pure functions over whole columns, no database: a rule is a boolean mask, and a row gets the
reason of the first rule it fails. They bound every value a later stage computes with, so that
no single row can make a stage raise (a date the scheduler cannot turn into an instant, an
amount ``NUMERIC(14,2)`` cannot store, a customer row without organization, a key repeated by
an adapted query); the reasons are the ones documented in ``docs/import.md``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
from babel.numbers import list_currencies

from dispatch.vocabulary import AccountingStatus, values

ISO_CURRENCIES = frozenset(list_currencies())
ACCOUNTING_STATUSES = values(AccountingStatus)

#: Issue and due dates are accepted from this day to the as-of day plus ``FUTURE_YEARS``.
DATE_FLOOR = dt.date(1970, 1, 1)
FUTURE_YEARS = 5
FLOOR_INSTANT = pd.Timestamp(DATE_FLOOR, tz="UTC")
#: ``NUMERIC(14,2)`` holds |x| < 10**12; amounts are rounded to the cent first.
AMOUNT_LIMIT = 10**12
#: Widths of the dispatch database's key columns (``String(64)``, ``String(8)``).
KEY_WIDTH = 64
LANGUAGE_WIDTH = 8

CUSTOMER_COLUMNS = ["customer_id", "org_id", "name", "parent_customer_id", "language"]


def date_window(as_of: dt.datetime) -> tuple[dt.date, dt.date]:
    """[1970-01-01, as-of day + 5 years]: every date in it gives a schedulable instant
    (a 29 February as-of day ends the window on 28 February)."""
    today = as_of.astimezone(dt.UTC).date()
    try:
        last = today.replace(year=today.year + FUTURE_YEARS)
    except ValueError:
        last = today.replace(year=today.year + FUTURE_YEARS, day=28)
    return DATE_FLOOR, last


def blank(s: pd.Series) -> pd.Series:
    return s.isna() | (s.astype("string").str.strip() == "")


def too_wide(s: pd.Series, width: int) -> pd.Series:
    return (s.astype("string").str.len() > width).fillna(False)


def has_nul(s: pd.Series) -> pd.Series:
    """PostgreSQL text cannot hold a NUL character: such a key or number cannot be stored."""
    text = s.astype("string")
    if "\x00" not in "".join(text[text.notna()].tolist()):
        return pd.Series(False, index=s.index)
    return text.str.contains("\x00", regex=False).fillna(False).astype(bool)


def parse_dates(s: pd.Series) -> pd.Series:
    """Dates as timestamps, ISO 8601 per value ('2026-12-02' next to '2026-12-02 00:00:00'
    from another writer); an unreadable value is missing."""
    return pd.to_datetime(s, errors="coerce", format="ISO8601")


def parse_instants(s: pd.Series) -> pd.Series:
    """``updated_at`` as UTC: SQLite sources hold text whose format varies with the writer."""
    return pd.to_datetime(s, utc=True, errors="coerce", format="ISO8601")


def out_of_window(raw: pd.Series, parsed: pd.Series, window: tuple[dt.date, dt.date]) -> pd.Series:
    """Dates outside ``window``: parsed ones compared, and unparsed ones whose year alone is
    outside (a '10000-01-01' is out of range rather than merely unreadable)."""
    low, high = pd.Timestamp(window[0]), pd.Timestamp(window[1])
    outside = (parsed.notna() & ((parsed < low) | (parsed > high))).astype(bool)
    unparsed = parsed.isna().to_numpy() & raw.notna().to_numpy()
    if unparsed.any():  # the year is read from the few values that did not parse, not all
        text = raw[unparsed].astype("string")
        year = pd.to_numeric(text.str.extract(r"^\s*(\d{4,})-", expand=False), errors="coerce")
        year_out = ((year < window[0].year) | (year > window[1].year)).fillna(False).astype(bool)
        outside = outside | year_out.reindex(outside.index, fill_value=False)
    return outside


@dataclass(frozen=True)
class Customers:
    """The usable customer rows (one per id) and the reason each unusable id is refused."""

    usable: pd.DataFrame
    refused: pd.Series  # customer_id -> reason


def check_customers(raw: pd.DataFrame) -> Customers:
    """One row per customer: exact copies (an adapted query's fan-out) are one; copies that
    disagree are ``duplicate_customer``; a row without organization or with an over-wide
    key is ``invalid_customer``. Rows without id cannot be referenced and are dropped."""
    df = raw[CUSTOMER_COLUMNS].copy()
    df = df.loc[~blank(df["customer_id"])]
    df["customer_id"] = df["customer_id"].astype(str)
    df = df.drop_duplicates()
    torn = df["customer_id"].duplicated(keep=False)
    invalid = (
        blank(df["org_id"])
        | too_wide(df["customer_id"], KEY_WIDTH)
        | too_wide(df["org_id"], KEY_WIDTH)
        | too_wide(df["parent_customer_id"], KEY_WIDTH)
        | has_nul(df["customer_id"])
        | has_nul(df["org_id"])
    )
    reason = pd.Series(np.where(torn, "duplicate_customer", "invalid_customer"), index=df.index)
    bad = torn | invalid
    refused = pd.Series(reason[bad].to_numpy(), index=df.loc[bad, "customer_id"].to_numpy())
    refused = refused[~refused.index.duplicated()]
    usable = df.loc[~bad].copy()
    usable["org_id"] = usable["org_id"].astype(str)
    language = usable["language"].astype("string").str.strip()
    usable["language"] = language.mask(blank(language) | too_wide(language, LANGUAGE_WIDTH), "en")
    usable["name"] = usable["name"].fillna("").astype(str).str.replace("\x00", "", regex=False)
    return Customers(usable, refused)


def collapse_copies(raw: pd.DataFrame) -> pd.DataFrame:
    """Exact copies of a row (an extract joined to line items) are one row. Only rows whose
    invoice id repeats can be copies, so only those are compared as text across columns."""
    if raw.empty:
        return raw
    repeated = raw["invoice_id"].astype("string").duplicated(keep=False).to_numpy()
    if not repeated.any():
        return raw
    copy = np.zeros(len(raw), dtype=bool)
    copy[repeated] = raw.loc[repeated].astype("string").duplicated().to_numpy()
    return raw.loc[~copy]


def invoice_rules(
    df: pd.DataFrame, customers: Customers, known_orgs: set[str], as_of: dt.datetime
) -> list[tuple[str, pd.Series]]:
    """The rules, in the order a person would fix them; ``df`` holds the parsed columns
    (``issue_date_p``, ``due_date_p``, ``total_p``, ``updated_at_p``) next to the raw ones."""
    window = date_window(as_of)
    currency = df["currency"].astype("string").str.strip()
    customer = df["customer_id"].astype("string")  # ids compare as text, whatever the driver gave
    customer_org = customer.map(customers.usable.set_index("customer_id")["org_id"])
    refused_customer = customer.map(customers.refused)
    ids = df["invoice_id"]
    # each text column converted once, for the rules that read it as text
    ids_text, number = ids.astype("string"), df["number"].astype("string")
    return [
        ("missing_invoice_id", blank(ids_text)),
        ("invalid_invoice_id", too_wide(ids_text, KEY_WIDTH) | has_nul(ids_text)),
        ("duplicate_invoice_id", ids.duplicated(keep=False)),
        ("unknown_org", ~df["org_id"].isin(known_orgs)),
        ("missing_number", blank(number)),
        ("invalid_number", has_nul(number)),
        # a NUL is never part of a file name; PostgreSQL text could not even store it
        ("invalid_pdf_path", has_nul(df["pdf_path"])),
        ("missing_issue_date", df["issue_date"].isna()),
        ("issue_date_out_of_range", out_of_window(df["issue_date"], df["issue_date_p"], window)),
        ("invalid_issue_date", df["issue_date_p"].isna()),
        ("due_date_out_of_range", out_of_window(df["due_date"], df["due_date_p"], window)),
        ("invalid_due_date", df["due_date"].notna() & df["due_date_p"].isna()),
        ("missing_customer_id", blank(customer)),
        ("duplicate_customer", (refused_customer == "duplicate_customer").fillna(False)),
        ("invalid_customer", (refused_customer == "invalid_customer").fillna(False)),
        ("unknown_customer", customer_org.isna()),
        ("customer_org_mismatch", (customer_org.notna() & (customer_org != df["org_id"])).fillna(False)),
        (
            "bad_currency",
            ~currency.str.upper().isin(ISO_CURRENCIES).fillna(False) | (currency.str.len() != 3),
        ),
        ("invalid_total", ~np.isfinite(df["total_p"])),
        # what rounds to 10**12 or more (compared unrounded: no overflow on huge values)
        ("total_out_of_range", df["total_p"].abs() >= AMOUNT_LIMIT - 0.005),
        ("negative_total", df["total_p"] < 0),
        ("bad_status", ~df["status"].isin(ACCOUNTING_STATUSES)),
        ("missing_updated_at", df["updated_at"].isna()),
        (
            "invalid_updated_at",
            df["updated_at_p"].isna() | (df["updated_at_p"] < pd.Timestamp(DATE_FLOOR, tz="UTC")),
        ),
    ]


def first_reason(index: pd.Index, rules: list[tuple[str, pd.Series]]) -> pd.Series:
    """Each row's first failing rule (NA: the row passes); a rule that cannot be evaluated
    for a row (NA) counts as failed. Decided on NumPy arrays, one pass per rule."""
    reason = np.full(len(index), None, dtype=object)
    open_rows = np.ones(len(index), dtype=bool)
    for name, mask in rules:
        failed = pd.Series(mask, index=index).fillna(True).to_numpy(dtype=bool) & open_rows
        reason[failed] = name
        open_rows &= ~failed
    return pd.Series(reason, index=index, dtype="string")


def parse_invoices(raw: pd.DataFrame) -> pd.DataFrame:
    """The raw rows with their parsed columns added (the raw ones stay for the quarantine)."""
    df = raw.copy()
    df["issue_date_p"] = parse_dates(df["issue_date"])
    df["due_date_p"] = parse_dates(df["due_date"])
    df["total_p"] = pd.to_numeric(df["total_amount"], errors="coerce").astype("float64")
    df["updated_at_p"] = parse_instants(df["updated_at"])
    return df
