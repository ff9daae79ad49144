"""What happened to each claimed action, written back in one transaction per chunk.

Every write is guarded by ``status = 'sending' AND claim_token = <ours>``: only the claim
holder can settle an action, so a slow worker whose claim was already settled by someone
else cannot overwrite the outcome (SPEC B1). The events and counts follow the rows the
guard let through, never the outcomes asked for: the audit log must not say that something
happened to an action another claimant had already settled.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, update

from dispatch.sending.events import record_events
from dispatch.storage.bulk import chunks, update_rows
from dispatch.storage.schema import invoice_actions
from dispatch.vocabulary import ActionStatus, EventName, ManualReason


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """The new state of one claimed action and the event that explains it (keywords only:
    four strings in a row are too easy to swap)."""

    action_id: str
    invoice_id: str
    status: ActionStatus  # sent | manual | cancelled | scheduled (released for a later run)
    event: EventName
    manual_reason: ManualReason | None = None
    detail: str | None = None
    recipient: str | None = None
    deliver_at: dt.datetime | None = None
    provider: str | None = None
    provider_message_id: str | None = None

    @classmethod
    def manual(
        cls, *, action_id: str, invoice_id: str, reason: ManualReason, detail: str | None, **more: Any
    ) -> Outcome:
        """The action goes to its owner's to-do list: status and event are both ``manual``,
        and a manual action always says why."""
        return cls(
            action_id=action_id,
            invoice_id=invoice_id,
            status=ActionStatus.MANUAL,
            event=EventName.MANUAL,
            manual_reason=reason,
            detail=detail,
            **more,
        )


def apply_outcomes(
    conn: Connection, outcomes: list[Outcome], *, token: str, at: dt.datetime, run_id: str | None
) -> dict[str, int]:
    """Write the outcomes of actions still claimed with ``token``; returns counts per event.

    Outcomes of actions no longer ours (settled by a run that thought us dead) change
    nothing and are neither logged nor counted.
    """
    held = _hold(conn, [o.action_id for o in outcomes], token=token, at=at)
    outcomes = [o for o in outcomes if o.action_id in held]
    if not outcomes:
        return {}
    rows = [
        {
            "action_id": o.action_id,
            "status": o.status,
            "manual_reason": o.manual_reason,
            "detail": o.detail,
            "recipient": o.recipient,
            "deliver_at": o.deliver_at,
            "provider": o.provider,
            "provider_message_id": o.provider_message_id,
            "claim_token": token if o.status != ActionStatus.SCHEDULED else None,
            "updated_at": at,
        }
        for o in outcomes
    ]
    update_rows(conn, invoice_actions, "action_id", rows, guard=_ours(token))
    by_event: dict[EventName, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_event[o.event].append(o)
    for event, group in by_event.items():
        record_events(
            conn,
            [(o.action_id, o.invoice_id) for o in group],
            event=event,
            at=at,
            run_id=run_id,
            details={o.action_id: _event_detail(o) for o in group},
        )
    return {e: len(g) for e, g in by_event.items()}


def _ours(token: str) -> ColumnElement[bool]:
    return and_(invoice_actions.c.status == ActionStatus.SENDING, invoice_actions.c.claim_token == token)


def _hold(conn: Connection, action_ids: list[str], *, token: str, at: dt.datetime) -> set[str]:
    """Which of ``action_ids`` are still claimed with ``token``, taken in one guarded UPDATE
    per chunk that returns them: their rows are then locked (PostgreSQL) or the database is
    (SQLite's ``BEGIN IMMEDIATE``) until the transaction ends, so the outcome write that
    follows changes exactly these rows."""
    held: set[str] = set()
    for part in chunks(action_ids):
        rows = conn.execute(
            update(invoice_actions)
            .where(invoice_actions.c.action_id.in_(part), _ours(token))
            .values(updated_at=at)
            .returning(invoice_actions.c.action_id)
        ).all()
        held.update(r[0] for r in rows)
    return held


def _event_detail(o: Outcome) -> str | None:
    parts = [p for p in (o.manual_reason, o.detail) if p]
    if o.status == ActionStatus.SENT:
        parts.append(
            f"to {o.recipient} via {o.provider} ({o.provider_message_id}), deliver at {o.deliver_at}"
        )
    return "; ".join(parts) or None
