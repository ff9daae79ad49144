"""Exclusive claims on due actions, and settling claims that dead runs left behind.

A claim moves an action from ``scheduled`` (or ``manual``, for a person's "send") to
``sending`` with a unique token, in one conditional UPDATE: of two runs racing for the same
action exactly one changes the row (on PostgreSQL the candidates are also locked with
``FOR UPDATE SKIP LOCKED`` so the loser does not wait). Whoever holds ``sending`` is the
only one allowed to hand the message over.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence

import pandas as pd
from sqlalchemy import Connection, and_, or_, select, update

from dispatch.channels.base import Channel, SendResult
from dispatch.db.bulk import chunks
from dispatch.db.schema import dispatch_runs, invoice_actions
from dispatch.db.session import Database
from dispatch.events import record_events
from dispatch.outcomes import Outcome, apply_outcomes
from dispatch.runs import RunContext

log = logging.getLogger(__name__)


def token_prefix(run_id: str, scope: str) -> str:
    """What every claim token of one task (a run's batch, a person's send) starts with."""
    return f"{run_id}#{scope}#"


def new_token(run_id: str, scope: str) -> str:
    return token_prefix(run_id, scope) + uuid.uuid4().hex[:12]


def claim(
    conn: Connection,
    action_ids: Sequence[str],
    *,
    token: str,
    ctx: RunContext,
    from_status: str = "scheduled",
) -> list[str]:
    """Claim those of ``action_ids`` still in ``from_status``; returns the ids won."""
    won: list[str] = []
    for part in chunks(list(action_ids)):
        cond = and_(invoice_actions.c.action_id.in_(part), invoice_actions.c.status == from_status)
        if conn.dialect.name == "postgresql":
            lockable = select(invoice_actions.c.action_id).where(cond).with_for_update(skip_locked=True)
            cond = and_(cond, invoice_actions.c.action_id.in_(lockable.scalar_subquery()))
        stmt = (
            update(invoice_actions)
            .where(cond)
            .values(
                status="sending",
                claim_token=token,
                claimed_at=ctx.as_of,
                claimed_by_run=ctx.run_id,
                attempts=invoice_actions.c.attempts + 1,
                updated_at=ctx.as_of,
            )
            .returning(invoice_actions.c.action_id, invoice_actions.c.invoice_id)
        )
        rows = conn.execute(stmt).all()
        record_events(conn, rows, event="claimed", at=ctx.as_of, run_id=ctx.run_id, detail=token)
        won.extend(r[0] for r in rows)
    return won


def release(conn: Connection, action_ids: Sequence[str], *, token: str, ctx: RunContext, why: str) -> int:
    """Give claims back untouched (the batch stopped before handing them over)."""
    n = 0
    for part in chunks(list(action_ids)):
        rows = conn.execute(
            update(invoice_actions)
            .where(
                invoice_actions.c.action_id.in_(part),
                invoice_actions.c.status == "sending",
                invoice_actions.c.claim_token == token,
            )
            .values(
                status="scheduled",
                claim_token=None,
                claimed_at=None,
                claimed_by_run=None,
                # what the send had written ahead of the hand-over did not happen
                recipient=None,
                deliver_at=None,
                provider=None,
                attempts=invoice_actions.c.attempts - 1,
                updated_at=ctx.as_of,
            )
            .returning(invoice_actions.c.action_id, invoice_actions.c.invoice_id)
        ).all()
        record_events(conn, rows, event="released", at=ctx.as_of, run_id=ctx.run_id, detail=why)
        n += len(rows)
    return n


def abandoned_claims(
    conn: Connection,
    ctx: RunContext,
    lease: dt.timedelta,
    *,
    same_scope_prefix: str | None = None,
    own_token: str | None = None,
) -> pd.DataFrame:
    """Actions left ``sending`` by a run that died: the claim is older than the lease on the
    as-of clock, or its run is recorded failed. With ``same_scope_prefix``, only those an
    earlier try of this very task claimed (Airflow runs one try of a task at a time); the
    run-wide sweep is compute_due's, done once per run rather than once per batch."""
    if same_scope_prefix:
        dead = and_(
            invoice_actions.c.claim_token.startswith(same_scope_prefix, autoescape=True),
            invoice_actions.c.claim_token != (own_token or ""),
        )
    else:
        failed_runs = select(dispatch_runs.c.run_id).where(dispatch_runs.c.status == "failed")
        dead = or_(
            invoice_actions.c.claimed_at < ctx.as_of - lease,
            invoice_actions.c.claimed_by_run.in_(failed_runs),
        )
    stmt = select(
        invoice_actions.c.action_id,
        invoice_actions.c.invoice_id,
        invoice_actions.c.channel,
        invoice_actions.c.claim_token,
        invoice_actions.c.recipient,
        invoice_actions.c.attempts,
    ).where(invoice_actions.c.status == "sending", dead)
    return pd.read_sql(stmt, conn)


def settle_abandoned(
    db: Database,
    ctx: RunContext,
    channels: dict[str, Channel],
    lease: dt.timedelta,
    *,
    same_scope_prefix: str | None = None,
    own_token: str | None = None,
) -> dict[str, int]:
    """Settle claims of dead runs, at most once each (the write is guarded by the old token).

    Where the backend can tell whether it has the message (the outbox: the file exists or
    not) the action is settled accordingly: sent, or back to ``scheduled`` for this run to
    send; where it cannot (SendGrid, Twilio, SMTP) it becomes manual ``delivery_unknown``,
    for a person to check, never re-sent (SPEC B1).
    """
    counts: dict[str, int] = {}
    with db.tx() as conn:
        stale = abandoned_claims(conn, ctx, lease, same_scope_prefix=same_scope_prefix, own_token=own_token)
        for token, group in stale.groupby("claim_token"):
            outcomes = []
            for rec in group.itertuples(index=False):
                channel = channels.get(rec.channel)
                known = channel.was_handed_over(rec.action_id) if channel is not None else None
                if isinstance(known, SendResult):
                    outcomes.append(
                        Outcome(
                            rec.action_id,
                            rec.invoice_id,
                            "sent",
                            "settled_sent",
                            detail=f"left sending by a dead run; {known.provider} has the message",
                            recipient=rec.recipient,
                            deliver_at=known.deliver_at,
                            provider=known.provider,
                            provider_message_id=known.provider_message_id,
                        )
                    )
                elif known is False:
                    outcomes.append(
                        Outcome(
                            rec.action_id,
                            rec.invoice_id,
                            "scheduled",
                            "claim_released",
                            detail="left sending by a dead run; the message was never handed over",
                        )
                    )
                else:
                    outcomes.append(
                        Outcome(
                            rec.action_id,
                            rec.invoice_id,
                            "manual",
                            "manual",
                            manual_reason="delivery_unknown",
                            detail="left sending by a dead run; the provider may or may not have accepted it",
                            recipient=rec.recipient,
                        )
                    )
            for k, v in apply_outcomes(
                conn, outcomes, token=str(token), at=ctx.as_of, run_id=ctx.run_id
            ).items():
                counts[k] = counts.get(k, 0) + v
    if counts:
        log.warning("settled claims left by dead runs: %s", counts)
    return counts
