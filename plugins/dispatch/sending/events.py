"""The append-only audit log of action state changes (SPEC B9)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import Connection

from dispatch.storage.bulk import append_rows
from dispatch.storage.schema import action_events
from dispatch.vocabulary import EventName, values

# Every event name the log holds, as plain strings (docs/data-dictionary.md explains each). A run's
# counts (``dispatch_runs.counts.run``) carry ``events.<name>`` for each of them, zeros included.
EVENTS = values(EventName)


def record_events(
    conn: Connection,
    rows: Iterable[tuple[str, str]],
    *,
    event: EventName,
    at: dt.datetime,
    run_id: str | None,
    detail: str | None = None,
    details: dict[str, str | None] | None = None,
    actor: str | None = None,
    template_ids: dict[str, str] | None = None,
) -> int:
    """Append one event per (action_id, invoice_id); ``details`` gives a per-action detail.

    ``actor`` is the person behind the events (NULL for what a run does on its own);
    ``template_ids`` the template version each event sent or re-queued its action with.
    """
    batch = [
        {
            "action_id": action_id,
            "invoice_id": invoice_id,
            "at": at,
            "event": event,
            "detail": details.get(action_id, detail) if details else detail,
            "run_id": run_id,
            "actor": actor,
            "template_id": template_ids.get(action_id) if template_ids else None,
        }
        for action_id, invoice_id in rows
    ]
    return append_rows(conn, action_events, batch)
