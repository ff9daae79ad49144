"""How listings are printed: a table that fits the terminal (120 columns by default), or
everything as JSON (``--json``) or CSV (``--csv``).

The table is for reading: long values are cut with "…" and the columns a person needs first
are kept when not everything fits; the machine formats always carry every column in full.
Instants are ISO 8601 UTC with ``Z`` in all three, whatever the database.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

import pandas as pd

from dispatch.vocabulary import ChannelName, ManualReason

WIDTH = 120
_GAP = 2
_MIN = 6


def jsonable(value: Any) -> Any:
    """A value as JSON/CSV shows it: instants ISO 8601 UTC with Z, dates ISO, NaN as null."""
    if value is None or (not isinstance(value, str | list | tuple | dict) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp | dt.datetime):
        ts = pd.Timestamp(value)
        ts = ts.tz_convert("UTC") if ts.tzinfo else ts.tz_localize("UTC")
        return ts.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, bool | int | float | str | dict | list):
        return value
    return str(value)


def _shown(value: Any) -> str:
    v = jsonable(value)
    if v is None:
        return ""
    text = json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else str(v)
    return " / ".join(text.splitlines())  # one line per row (postal addresses)


def as_json(df: pd.DataFrame) -> str:
    records = [{k: jsonable(v) for k, v in rec.items()} for rec in df.to_dict("records")]
    return json.dumps(records, ensure_ascii=False)


def as_csv(df: pd.DataFrame) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(list(df.columns))
    for rec in df.itertuples(index=False):
        writer.writerow(
            [
                "" if (v := jsonable(x)) is None else (json.dumps(v) if isinstance(v, dict | list) else v)
                for x in rec
            ]
        )
    return out.getvalue()


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def as_table(df: pd.DataFrame, columns: list[str] | None = None, width: int = WIDTH) -> str:
    """A plain table no wider than ``width``: ``columns`` (in order of importance) are shown
    while they fit; the widest are cut first. The footer says what was left out."""
    if df.empty:
        return "(none)"
    names = [c for c in (columns or list(df.columns)) if c in df.columns]
    cells = {c: [_shown(v) for v in df[c]] for c in names}
    want = {c: max([len(c), *map(len, cells[c])]) for c in names}
    shown = [c for c in names]
    # drop trailing (least important) columns that cannot get even a minimal width
    while (
        len(shown) > 1
        and sum(min(want[c], max(len(c), _MIN)) for c in shown) + _GAP * (len(shown) - 1) > width
    ):
        shown.pop()
    widths = {c: want[c] for c in shown}
    budget = width - _GAP * (len(shown) - 1)
    while sum(widths.values()) > budget:
        widest = max(shown, key=lambda c: widths[c])
        floor = max(min(len(widest), 12), _MIN)
        if widths[widest] <= floor:
            break
        widths[widest] -= 1
    lines = [
        "  ".join(_cut(c, widths[c]).ljust(widths[c]) for c in shown).rstrip(),
        "  ".join("-" * widths[c] for c in shown),
    ]
    for i in range(len(df)):
        lines.append("  ".join(_cut(cells[c][i], widths[c]).ljust(widths[c]) for c in shown).rstrip())
    hidden = [c for c in names if c not in shown]
    footer = f"({len(df)} rows"
    footer += f"; not shown: {', '.join(hidden)} — --json or --csv give every column)" if hidden else ")"
    lines.append(footer)
    return "\n".join(line[:width] for line in lines)


# A manual action's reason as the person who fixes it reads it: what is wrong and what to do.
_CONTACT: dict[str, str] = {
    ChannelName.EMAIL: "an e-mail address",
    ChannelName.SMS: "a mobile number",
    ChannelName.LETTER: "a postal address",
}
_THE_CONTACT: dict[str, str] = {
    ChannelName.EMAIL: "the e-mail address",
    ChannelName.SMS: "the mobile number",
    ChannelName.LETTER: "the postal address",
}
_BOUNCED: dict[str, str] = {
    ChannelName.EMAIL: "The e-mail bounced",
    ChannelName.SMS: "The SMS was not delivered",
    ChannelName.LETTER: "The letter came back",
}


def reason_in_words(
    reason: str | None, channel: str, customer: str | None, plan: str | None, detail: str | None
) -> str:
    """``reason`` in plain words with what to fix ("add an e-mail address to customer X")."""
    who = f"customer {customer}" if customer else "the customer"
    contact = _CONTACT.get(channel, "a contact")
    plan_name = (plan if plan.lower().startswith("plan ") else f"plan {plan}") if plan else "the plan"
    the_contact = _THE_CONTACT.get(channel, "the contact")
    R = ManualReason
    words: dict[str, str] = {
        R.MANUAL_TEMPLATE: f"The template of {plan_name} is manual: send it or ignore it.",
        R.NO_CONTACT: f"Add {contact} to {who}, then send.",
        R.INVALID_CONTACT: f"Fix {the_contact} of {who}, then send.",
        R.TEMPLATE_ERROR: f"Fix the template of {plan_name} and load the configuration, then send.",
        R.PROVIDER_REJECTED: f"The provider refused it: fix {the_contact} of {who} or the message.",
        R.PROVIDER_ERROR: "The provider kept failing: send again later.",
        R.DELIVERY_UNKNOWN: "The provider never said whether it went out: check with it before sending.",
        # the provider's reason is in the detail (docs/webhooks.md)
        R.BOUNCED: f"{_BOUNCED.get(channel, 'It did not arrive')}: fix {the_contact} of {who}, then send.",
        R.MISSING_PDF: "The invoice PDF is not where the accounting system says: put it there, then send.",
        R.PDF_OUTSIDE_ROOT: "The invoice PDF lies outside the invoice folder: move it there, then send.",
        R.INVALID_PDF: "The invoice PDF is not a valid PDF or is too large: replace it, then send.",
    }
    said = words.get(reason or "", f"Manual ({reason}).")
    return f"{said} ({detail})" if detail else said
