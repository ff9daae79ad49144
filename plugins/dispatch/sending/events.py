"""The append-only audit log of action state changes (SPEC B9)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import Connection

from dispatch.storage.bulk import append_rows
from dispatch.storage.schema import action_events

# Every event name the log holds (docs/data-dictionary.md explains each). A run's counts
# (``dispatch_runs.counts.run``) carry ``events.<name>`` for each of them, zeros included.
EVENTS = (
    "created",  # a run created the action (template resolved, scheduled_for computed)
    "claimed",  # a run or a person took the action to send it
    "sent",  # a run handed it over
    "sent_manually",  # a person's `todo send` handed it over
    "manual",  # it went to the to-do list (manual_reason on the action)
    "cancelled",  # the invoice is void or deleted in the accounting system
    "retry_later",  # a provider failed transiently; back to scheduled for a later run
    "released",  # a claim given back untouched (a fatal provider error stopped the batch)
    "settled_sent",  # a dead run's claim: the provider has the message
    "claim_released",  # a dead run's claim: never handed over, back to scheduled
    "bounced",  # SendGrid reported the sent e-mail bounced, blocked or invalid
    "ignored",  # a person ignored it (the invoice counts as sent)
    "marked_sent",  # a person marked the invoice as sent
    "template_refreshed",  # moved to the plan's current template version before a send
    "requeued",  # a template_error / missing_pdf whose cause is fixed: scheduled again
)


def record_events(
    conn: Connection,
    rows: Iterable[tuple[str, str]],
    *,
    event: str,
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
