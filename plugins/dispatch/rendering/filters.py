"""The Babel filters ``money`` and ``date``, and the locale they format in.

Amounts and dates are formatted in the customer's language, so "1 234,50 €" reaches a French
customer and "€1,234.50" an English one. A filter only receives its operands, so the locale of
the render under way is a context variable (:func:`rendering_in`), not an argument, and not a
global either, because renders run concurrently in the threads of a worker.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from typing import Any

import jinja2
from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_currency, format_decimal

FALLBACK_LANGUAGE = "en"

_RENDER_LOCALE: contextvars.ContextVar[Locale | None] = contextvars.ContextVar("_RENDER_LOCALE", default=None)


@functools.lru_cache(maxsize=256)
def resolve_locale(language: str | None) -> Locale:
    """The Babel locale for a customer's ``language`` ('fr', 'fr-BE', 'en_GB', …).

    Unknown, empty or malformed values fall back to the language part, then to English:
    a typo in the accounting system must not stop an invoice from going out.
    """
    if not isinstance(language, str) or not language.strip():
        return Locale.parse(FALLBACK_LANGUAGE)
    tag = language.strip().replace("-", "_")
    for candidate in (tag, tag.split("_", 1)[0]):
        try:
            return Locale.parse(candidate)
        except (UnknownLocaleError, ValueError, TypeError):
            continue
    return Locale.parse(FALLBACK_LANGUAGE)


@contextmanager
def rendering_in(locale: Locale) -> Iterator[None]:
    """The filters format in ``locale`` until the block ends (one render)."""
    token = _RENDER_LOCALE.set(locale)
    try:
        yield
    finally:
        _RENDER_LOCALE.reset(token)


def _current_locale() -> Locale:
    return _RENDER_LOCALE.get() or resolve_locale(None)


def to_decimal(amount: Any) -> Decimal:
    """An amount as a finite Decimal; ``ValueError`` for anything that is not one."""
    if isinstance(amount, bool) or amount is None:
        raise ValueError(f"money: not an amount: {amount!r}")
    if isinstance(amount, Decimal):
        return amount
    try:
        # str() first so that a float such as 0.1 formats as 0.1, not its binary value.
        value = Decimal(str(amount).strip())
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"money: not an amount: {str(amount)[:40]!r}") from exc
    if not value.is_finite():
        raise ValueError(f"money: not an amount: {str(amount)[:40]!r}")
    return value


def to_date(value: Any) -> dt.date:
    """A date from a date, a datetime (its date) or an ISO ``YYYY-MM-DD…`` string."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and re.match(r"^\d{4}-\d{2}-\d{2}", value.strip()):
        return dt.date.fromisoformat(value.strip()[:10])
    raise ValueError(f"date: not a date: {str(value)[:40]!r}")


def money_filter(amount: Any, currency: str | None = None) -> str:
    """``{{ invoice.total_amount|money(invoice.currency) }}`` → '€1,234.50' / '1 234,50 €'.

    Without a currency the amount is formatted as a plain number with two decimals.
    """
    value = to_decimal(amount)
    locale = _current_locale()
    if currency is None or (isinstance(currency, str) and not currency.strip()):
        return format_decimal(value, format="#,##0.00", locale=locale)
    code = str(currency).strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise ValueError(f"money: not a currency code: {str(currency)[:10]!r}")
    return format_currency(value, code, locale=locale)


def date_filter(value: Any, format: str = "long") -> str:
    """``{{ invoice.issue_date|date }}`` → 'December 2, 2026' / '2 décembre 2026'.

    ``format`` is 'full', 'long' (default), 'medium', 'short', or a CLDR date pattern
    such as 'd MMMM y'.
    """
    if not isinstance(format, str) or not format.strip():
        raise ValueError("date: the format must be 'full', 'long', 'medium', 'short' or a CLDR pattern")
    return format_date(to_date(value), format=format, locale=_current_locale())


# ``pass_context`` is what stops Jinja from folding ``{{ 1234.5|money('EUR') }}`` into a
# constant at compile time, which would format it once, in the wrong locale, and cache that.
@jinja2.pass_context
def money_in_template(_context: jinja2.runtime.Context, amount: Any, currency: str | None = None) -> str:
    """The ``money`` filter as templates call it."""
    return money_filter(amount, currency)


@jinja2.pass_context
def date_in_template(_context: jinja2.runtime.Context, value: Any, format: str = "long") -> str:
    """The ``date`` filter as templates call it."""
    return date_filter(value, format)


#: the filters templates may use besides Jinja's own
FILTERS = {"money": money_in_template, "date": date_in_template}
