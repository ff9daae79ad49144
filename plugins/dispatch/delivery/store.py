"""Storing a request's delivery events: one INSERT for the whole batch, re-deliveries ignored.

Providers retry until they get a 2xx, and a retry carries the same event id: the unique key
(``provider``, ``provider_event_id``) with ``ON CONFLICT DO NOTHING`` (PostgreSQL) / ``INSERT
OR IGNORE`` (SQLite) makes the same event twice one row, concurrent requests included.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import Connection

from dispatch.delivery.event import DeliveryEvent
from dispatch.storage.bulk import chunks, dialect_insert
from dispatch.storage.schema import delivery_events

#: rows per INSERT: 12 columns x 2,000 rows stays under SQLite's 32,766 bound parameters
STORE_CHUNK = 2000
KEY = ("provider", "provider_event_id")


def store_events(conn: Connection, events: Sequence[DeliveryEvent], received_at: dt.datetime) -> int:
    """Insert the events not stored yet (unmatched: ``action_id`` NULL); returns how many were new."""
    unique = {(e.provider, e.provider_event_id): e for e in events}  # a batch may repeat an event
    rows = [e.row(received_at) for e in unique.values()]
    stored = 0
    for part in chunks(rows, STORE_CHUNK):
        stmt = (
            dialect_insert(conn, delivery_events)
            .values(list(part))
            .on_conflict_do_nothing(index_elements=list(KEY))
            .returning(delivery_events.c.delivery_id)  # rowcount is not reliable for a multi-row INSERT
        )
        stored += len(conn.execute(stmt).all())
    return stored
