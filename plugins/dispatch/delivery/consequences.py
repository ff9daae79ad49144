"""What a delivery event changes: a message that did not reach the customer goes back to
its owner's to-do list.

A bounced or dropped e-mail, an undelivered or failed SMS and a returned letter (state
``bounced``) make the sent action manual with reason ``bounced`` and the provider's reason
as its detail, with one ``bounced`` event. The update is guarded by ``status = 'sent'``: an
action the daily bounce pull (or an earlier event: a bounce and a drop of the same message)
already moved is left alone, so each action gets one manual move and one event, whichever
path comes first. The other states change nothing on the action; they are what the invoice
page and ``delivery_status`` show.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import Connection, update

from dispatch.delivery.event import BOUNCED_STATES
from dispatch.delivery.matching import Matched
from dispatch.sending.events import record_events
from dispatch.storage.bulk import chunks, update_rows
from dispatch.storage.schema import invoice_actions
from dispatch.vocabulary import ActionStatus, EventName, ManualReason

REASON = ManualReason.BOUNCED


def detail_of(m: Matched) -> str:
    """The to-do list's detail: who reported what about which recipient, when, and why."""
    when = m.occurred_at or m.received_at
    text = f"{m.provider} {m.event}: {m.recipient or '?'} at {when:%Y-%m-%d %H:%M:%S}Z"
    return (f"{text}: {m.reason}" if m.reason else text)[:1000]


def apply_consequences(
    conn: Connection, matched: Sequence[Matched], *, at: dt.datetime, run_id: str | None = None
) -> int:
    """Move the sent actions of the just-matched bounced events to manual ``bounced`` (once
    each); returns how many moved."""
    first: dict[str, Matched] = {}
    for m in sorted(matched, key=lambda m: (m.occurred_at or m.received_at, m.delivery_id)):
        if m.state in BOUNCED_STATES:
            first.setdefault(m.action_id, m)
    if not first:
        return 0
    a = invoice_actions.c
    moved: list[tuple[str, str]] = []
    for part in chunks(sorted(first)):
        moved += [
            (row[0], row[1])
            for row in conn.execute(
                update(invoice_actions)
                .where(a.action_id.in_(list(part)), a.status == ActionStatus.SENT)
                .values(status=ActionStatus.MANUAL, manual_reason=REASON, updated_at=at)
                .returning(a.action_id, a.invoice_id)
            ).all()
        ]
    if not moved:
        return 0
    details = {action_id: detail_of(first[action_id]) for action_id, _ in moved}
    update_rows(
        conn,
        invoice_actions,
        "action_id",
        [{"action_id": k, "detail": v} for k, v in details.items()],
        guard=a.manual_reason == REASON,
    )
    record_events(
        conn,
        moved,
        event=EventName.BOUNCED,
        at=at,
        run_id=run_id,
        details={k: f"bounced; {v}" for k, v in details.items()},
    )
    return len(moved)
