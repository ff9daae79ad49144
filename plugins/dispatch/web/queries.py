"""What the pages read: one query per page, read-only, set-based.

The invoices page pages by key (``invoice_id``, the primary key's index), never by OFFSET:
the first, a middle and the last of a million invoices cost the same — an index walk that
stops after one page. The status is the view ``invoice_status`` (the one definition of
"to send / not due / overdue / paid / void"); the search reads the customers first, then
the invoices by their indexes (number, customer).
"""

from __future__ import annotations

import datetime as dt
import email
import json
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, text

from dispatch.people.operations import check_invoice_status, instants_as_utc, require_schema
from dispatch.vocabulary import ChannelName

PAGE_SIZE = 50
MAX_SEARCH_CUSTOMERS = 500  # a search naming more customers than this asks for a narrower one

INVOICE_COLUMNS = (
    "i.invoice_id, i.org_id, i.customer_id, c.name AS customer_name, i.number, i.issue_date, "
    "i.due_date, i.currency, i.total_amount, i.sending_status, i.sent_how, i.sent_at, s.status"
)


@dataclass
class InvoicePage:
    rows: list[dict[str, Any]]
    has_next: bool
    has_previous: bool
    params: dict[str, str] = field(default_factory=dict)

    @property
    def first_id(self) -> str | None:
        return self.rows[0]["invoice_id"] if self.rows else None

    @property
    def last_id(self) -> str | None:
        return self.rows[-1]["invoice_id"] if self.rows else None


def _matching_customers(engine: Engine, q: str) -> list[str]:
    pattern = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    sql = text(
        "SELECT customer_id FROM customers WHERE customer_id = :q "
        "OR lower(name) LIKE :pattern ESCAPE '\\' LIMIT :limit"
    )
    with engine.connect() as conn:
        return list(conn.execute(sql, {"q": q, "pattern": pattern, "limit": MAX_SEARCH_CUSTOMERS}).scalars())


def invoice_page(
    engine: Engine,
    *,
    status: str | None = None,
    q: str | None = None,
    after: str | None = None,
    before: str | None = None,
    last: bool = False,
    size: int = PAGE_SIZE,
) -> InvoicePage:
    """One page of invoices in ``invoice_id`` order: the first; the one ``after`` or ``before``
    a key; or the ``last``. ``status`` as ``dispatch invoices --status``; ``q`` an invoice
    number, a customer id or part of a customer's name."""
    require_schema(engine)
    if status is not None:
        check_invoice_status(status)
    where, params = [], {}
    if status is not None:
        where.append("(s.status = :status OR i.sending_status = :status)")
        params["status"] = status
    if q:
        customers = _matching_customers(engine, q)
        bind = ", ".join(f":c{n}" for n in range(len(customers)))
        where.append(f"(i.number = :q{f' OR i.customer_id IN ({bind})' if customers else ''})")
        params.update({"q": q, **{f"c{n}": c for n, c in enumerate(customers)}})
    backwards = last or before is not None
    # the key bounds both sides of the join with the view, so each index walk starts at the key
    if after is not None:
        where.append("i.invoice_id > :key AND s.invoice_id > :key")
        params["key"] = after
    elif before is not None:
        where.append("i.invoice_id < :key AND s.invoice_id < :key")
        params["key"] = before
    sql = (
        f"SELECT {INVOICE_COLUMNS} FROM invoices i "
        "JOIN invoice_status s ON s.invoice_id = i.invoice_id "
        "LEFT JOIN customers c ON c.customer_id = i.customer_id"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY i.invoice_id {'DESC' if backwards else 'ASC'} LIMIT {int(size) + 1}"
    )
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text(sql), params)]
    more = len(rows) > size
    rows = rows[:size]
    if backwards:
        rows.reverse()
    filters = {k: v for k, v in (("status", status), ("q", q)) if v}
    if last:
        return InvoicePage(rows, has_next=False, has_previous=more, params=filters)
    if before is not None:
        return InvoicePage(rows, has_next=True, has_previous=more, params=filters)
    return InvoicePage(rows, has_next=more, has_previous=after is not None, params=filters)


def invoice_detail(engine: Engine, invoice_id: str) -> dict[str, Any] | None:
    """One invoice with its status, its action and its events, oldest first."""
    require_schema(engine)
    with engine.connect() as conn:
        row = conn.execute(
            text(
                f"SELECT {INVOICE_COLUMNS}, i.accounting_status, i.first_seen_at, i.pdf_path FROM invoices i "
                "JOIN invoice_status s ON s.invoice_id = i.invoice_id "
                "LEFT JOIN customers c ON c.customer_id = i.customer_id WHERE i.invoice_id = :id"
            ),
            {"id": invoice_id},
        ).first()
        if row is None:
            return None
        action = conn.execute(
            text(
                "SELECT a.*, p.name AS plan_name FROM invoice_actions a "
                "LEFT JOIN plans p ON p.plan_id = a.plan_id WHERE a.invoice_id = :id"
            ),
            {"id": invoice_id},
        ).first()
        events = instants_as_utc(
            pd.read_sql(
                text(
                    "SELECT event_id, at, event, detail, run_id, actor, template_id FROM action_events "
                    "WHERE invoice_id = :id ORDER BY at, event_id"
                ),
                conn,
                params={"id": invoice_id},
            ).rename(columns={"at": "created_at"})
        )
        # each recipient's latest delivery state, from the providers' webhooks (docs/webhooks.md)
        deliveries = pd.read_sql(
            text(
                "SELECT recipient, state, event, provider, reason, at FROM delivery_status "
                "WHERE invoice_id = :id ORDER BY recipient"
            ),
            conn,
            params={"id": invoice_id},
        )
        deliveries["at"] = pd.to_datetime(deliveries["at"], utc=True, format="ISO8601")
        # and the states it went through on its way there, each at the first time it was seen
        steps = pd.read_sql(
            text(
                "SELECT COALESCE(d.recipient, a.recipient) AS recipient, d.state, "
                "MIN(COALESCE(d.occurred_at, d.received_at)) AS at "
                "FROM delivery_events d JOIN invoice_actions a "
                "ON a.action_id = d.action_id AND a.provider_message_id = d.provider_message_id "
                "WHERE a.invoice_id = :id AND d.state <> 'other' "
                "GROUP BY COALESCE(d.recipient, a.recipient), d.state ORDER BY 3"
            ),
            conn,
            params={"id": invoice_id},
        )
        steps["at"] = pd.to_datetime(steps["at"], utc=True, format="ISO8601")
        by_recipient = {
            r: g[["state", "at"]].to_dict("records") for r, g in steps.groupby("recipient", sort=False)
        }
        deliveries["steps"] = pd.Series(
            [by_recipient.get(r, []) for r in deliveries["recipient"]], index=deliveries.index, dtype=object
        )
    return {
        "invoice": dict(row._mapping),
        "action": dict(action._mapping) if action is not None else None,
        "events": events.to_dict("records"),
        "deliveries": deliveries.to_dict("records"),
    }


@dataclass
class SentMessage:
    """The message as it went out, read back from the outbox file (CONTRACT §6)."""

    channel: str
    path: Path
    subject: str | None = None
    to: str | None = None
    html: str | None = None
    text: str | None = None
    pdf: bytes | None = None
    pdf_name: str | None = None


def _email(path: Path) -> SentMessage:
    message = email.message_from_bytes(path.read_bytes(), policy=default_policy)
    assert isinstance(message, EmailMessage)
    html = message.get_body(("html",))
    plain = message.get_body(("plain",))
    sent = SentMessage(
        ChannelName.EMAIL,
        path,
        subject=str(message.get("Subject", "")),
        to=str(message.get("To", "")),
        html=html.get_content() if html is not None else None,
        text=plain.get_content() if plain is not None else None,
    )
    for part in message.iter_attachments():
        if part.get_content_type() == "application/pdf":
            sent.pdf, sent.pdf_name = part.get_content(), part.get_filename() or "invoice.pdf"
            break
    return sent


def sent_message(outbox: Path, channel: str, action_id: str) -> SentMessage | None:
    """The outbox file of ``action_id``, or None (not sent yet, or sent through a provider,
    which keeps no copy here)."""
    from dispatch.channels.outbox import SUFFIXES, is_safe_action_id

    if not is_safe_action_id(action_id):
        return None
    suffix = SUFFIXES.get(channel)
    path = outbox / channel / f"{action_id}{suffix}"
    if suffix is None or not path.is_file():
        return None
    if channel == ChannelName.EMAIL:
        return _email(path)
    if channel == ChannelName.SMS:
        record = json.loads(path.read_text(encoding="utf-8"))
        return SentMessage(ChannelName.SMS, path, to=record.get("to"), text=record.get("body"))
    return SentMessage(ChannelName.LETTER, path, pdf=path.read_bytes(), pdf_name=f"{action_id}.pdf")


def sends_per_day(engine: Engine, since: dt.date) -> pd.DataFrame:
    """Invoices sent per UTC day and channel since ``since`` (view ``daily_sends``)."""
    require_schema(engine)
    sql = text(
        "SELECT day, COALESCE(channel, 'none') AS channel, SUM(invoices) AS invoices FROM daily_sends "
        "WHERE day >= :since GROUP BY day, COALESCE(channel, 'none') ORDER BY day"
    )
    since_param: str | dt.date = since.isoformat() if engine.dialect.name == "sqlite" else since
    with engine.connect() as conn:
        df = pd.read_sql(sql, conn, params={"since": since_param})
    df["day"] = pd.to_datetime(df["day"]).dt.date
    df["invoices"] = df["invoices"].astype(int)
    return df
