"""The variables a template sees, built from the rows of one invoice.

Only these documented values reach a template (never the source rows, file paths or ORM
objects), so what a template can read is exactly what ``docs/templates.md`` lists. The rows
come in the shapes below; a missing value may be absent, ``None``, or pandas' NaN/NaT.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Required, TypedDict

from dispatch.rendering.filters import to_date, to_decimal

# The values are ``object``: they arrive as read from the database or a DataFrame (str, date,
# Decimal, float, NaN, NaT, None…) and turning them into the template's types is this module's job.


class CustomerRow(TypedDict, total=False):
    """The invoice's customer: ``language`` picks the wording and the formats."""

    id: object
    name: object
    language: object


class InvoiceRow(TypedDict, total=False):
    """The invoice. ``number``, ``issue_date`` (a date or ``YYYY-MM-DD``), ``currency`` and
    ``total_amount`` are what every message needs; ``pdf_path`` only tells the template
    whether a PDF is attached."""

    id: object
    number: Required[object]
    issue_date: Required[object]
    due_date: object
    currency: Required[object]
    total_amount: Required[object]
    status: object
    pdf_path: object


class OrganizationRow(TypedDict, total=False):
    """The organization that sends the invoice."""

    id: object
    name: object


class OwnerRow(TypedDict, total=False):
    """The customer's owner (account manager), when there is one."""

    id: object
    name: object
    email: object


def _is_nan(value: Any) -> bool:
    """NaN and pandas' NaT are the only values unequal to themselves; both mean 'no value'."""
    try:
        return bool(value != value)
    except Exception:  # an exotic object: treat it as a value
        return False


def _value(row: Mapping[str, Any], key: str, *, required: str | None = None) -> Any:
    """``row[key]``, with absent, None and NaN all read as None (or refused when ``required``)."""
    value = row.get(key)
    if value is None or _is_nan(value):
        if required:
            raise ValueError(f"build_context: {required} is missing")
        return None
    return value


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _optional_date(value: Any, field: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return to_date(value)
    except ValueError as exc:
        raise ValueError(f"build_context: {field} is not a date: {value!r}") from exc


def _total_amount(invoice: InvoiceRow) -> Decimal:
    """The total as a Decimal. Infinite and NaN totals are kept as such (``Decimal('Infinity')``,
    ``Decimal('NaN')``) for ``render_message`` to refuse as that message's template error;
    a missing or unreadable one is a data error (``ValueError``)."""
    raw = invoice.get("total_amount")
    if isinstance(raw, float) and not math.isfinite(raw):
        return Decimal("NaN") if math.isnan(raw) else Decimal(raw)
    if isinstance(raw, str) and raw.strip().lower().lstrip("+-") in ("inf", "infinity", "nan"):
        return Decimal(raw.strip())
    if isinstance(raw, Decimal) and not raw.is_finite():
        return raw
    try:
        return to_decimal(_value(invoice, "total_amount", required="invoice.total_amount"))
    except ValueError as exc:
        raise ValueError(f"build_context: invoice.total_amount is not an amount: {exc}") from exc


def build_context(
    *,
    customer: CustomerRow,
    invoice: InvoiceRow,
    organization: OrganizationRow,
    owner: OwnerRow | None,
    today: dt.date,
) -> dict[str, Any]:
    """The variables a template sees, as plain dicts of str / date / Decimal / bool.

    ``today`` is the run's as-of date in the organization's time zone (never the wall clock,
    so a replay renders the same text). Raises ``ValueError`` for an invoice row without the
    fields every message needs: that is a data error, not a template error.
    """
    issue_date = _optional_date(
        _value(invoice, "issue_date", required="invoice.issue_date"), "invoice.issue_date"
    )
    currency = str(_value(invoice, "currency", required="invoice.currency")).strip().upper()
    total_amount = _total_amount(invoice)
    owner_row: OwnerRow = owner or {}
    return {
        "customer": {
            "id": _text(_value(customer, "id")),
            "name": _text(_value(customer, "name")) or "",
            "language": _text(_value(customer, "language")),
        },
        "invoice": {
            "id": _text(_value(invoice, "id")),
            "number": _text(_value(invoice, "number", required="invoice.number")),
            "issue_date": issue_date,
            "due_date": _optional_date(_value(invoice, "due_date"), "invoice.due_date"),
            "currency": currency,
            "total_amount": total_amount,
            "status": _text(_value(invoice, "status")),
            "has_pdf": bool(_value(invoice, "pdf_path")),
        },
        "organization": {
            "id": _text(_value(organization, "id")),
            "name": _text(_value(organization, "name")) or "",
        },
        "owner": {
            "id": _text(_value(owner_row, "id")),
            "name": _text(_value(owner_row, "name")),
            "email": _text(_value(owner_row, "email")),
        },
        "today": to_date(today),
    }
