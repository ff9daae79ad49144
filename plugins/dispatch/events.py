"""The append-only audit log of action state changes (SPEC B9)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import Connection

from dispatch.db.bulk import append_rows
from dispatch.db.schema import action_events


def record_events(
    conn: Connection,
    rows: Iterable[tuple[str, str]],
    *,
    event: str,
    at: dt.datetime,
    run_id: str | None,
    detail: str | None = None,
    details: dict[str, str | None] | None = None,
) -> int:
    """Append one event per (action_id, invoice_id); ``details`` gives a per-action detail."""
    batch = [
        {
            "action_id": action_id,
            "invoice_id": invoice_id,
            "at": at,
            "event": event,
            "detail": details.get(action_id, detail) if details else detail,
            "run_id": run_id,
        }
        for action_id, invoice_id in rows
    ]
    return append_rows(conn, action_events, batch)
