"""Matching delivery events to actions through the provider message id the send recorded.

An event may arrive before the send's ``sent`` write (a provider answers within
milliseconds, the batch writes its outcomes when it ends), out of order, or for a message
this database never sent (another system on the same account). It is kept unmatched
(``action_id`` NULL) and matched later: by the next request about the same message, by the
sweep over the recently received ones (:func:`match_received_since`) and by the daily run
(``pull_bounces``) over :data:`MATCH_WINDOW`.

The message id alone identifies the message: each provider's ids have their own shape
(SendGrid's X-Message-Id, Twilio's ``SM…``, the print API's ``ltr_…``, the outbox's
``email/<action_id>.eml``), and an event is only stored once its provider's signature holds,
so the action's ``provider`` is not compared (the demo posts provider events about the
outbox's messages, standing in for a provider it does not have).

Each UPDATE sets ``action_id`` only where it is still NULL and returns the rows it set, so
an event is matched once — and its consequence applied once — however many requests or
runs try at the same time (PostgreSQL re-checks the condition after a concurrent update).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import Connection, update

from dispatch.storage.bulk import chunks
from dispatch.storage.schema import delivery_events, invoice_actions

#: the daily run matches the unmatched events received this long before its as-of instant
MATCH_WINDOW = dt.timedelta(days=7)


@dataclass(frozen=True)
class Matched:
    """An event just matched to its action."""

    delivery_id: int
    action_id: str
    provider: str
    provider_message_id: str
    event: str
    state: str
    recipient: str | None
    reason: str | None
    occurred_at: dt.datetime | None
    received_at: dt.datetime


def _match(conn: Connection, *conditions) -> list[Matched]:  # type: ignore[no-untyped-def]
    d, a = delivery_events.c, invoice_actions.c
    stmt = (
        update(delivery_events)
        .where(
            d.action_id.is_(None),
            a.provider_message_id == d.provider_message_id,
            *conditions,
        )
        .values(action_id=a.action_id)
        .returning(
            d.delivery_id,
            d.action_id,
            d.provider,
            d.provider_message_id,
            d.event,
            d.state,
            d.recipient,
            d.reason,
            d.occurred_at,
            d.received_at,
        )
    )
    return [Matched(*row) for row in conn.execute(stmt).all()]


def match_messages(conn: Connection, provider: str, message_ids: Collection[str]) -> list[Matched]:
    """Match every unmatched event of these messages: the request's own events, and those
    of the same messages that came before the send's write."""
    ids = sorted({m for m in message_ids if m})
    matched: list[Matched] = []
    for part in chunks(ids):
        matched += _match(
            conn,
            delivery_events.c.provider == provider,
            delivery_events.c.provider_message_id.in_(list(part)),
        )
    return matched


def match_received_since(conn: Connection, since: dt.datetime) -> list[Matched]:
    """Match the unmatched events received since ``since`` whose message is now an action's
    (an index range over the unmatched rows, joined to the actions by message id)."""
    return _match(conn, delivery_events.c.received_at >= since)
