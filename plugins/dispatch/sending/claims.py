"""Exclusive claims on due actions, and settling claims that dead runs left behind.

A claim moves an action from ``scheduled`` (or ``manual``, for a person's "send") to
``sending`` with a unique token, in one conditional UPDATE: of two runs racing for the same
action exactly one changes the row (on PostgreSQL the candidates are also locked with
``FOR UPDATE SKIP LOCKED`` so the loser does not wait). Whoever holds ``sending`` is the
only one allowed to hand the message over.

Liveness (SPEC "Time") is judged on the wall clock, never on the as-of clock: each claim has
a lease row (``claim_leases``) whose heartbeat, on the database's clock, the claimant renews
with every window of requests (:func:`mark_handover`). Before a window goes out, its actions
get ``handover_at`` in the same statement that checks the claim is still ours — so a
claimant whose claim was settled by someone else (it was thought dead) sends nothing more,
and a dead claim's actions without ``handover_at`` were provably never handed over: they go
back to ``scheduled`` and the run that finds them sends them. Only a window in flight is
left for the channel to settle, or for a person (``delivery_unknown``).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import pandas as pd
from sqlalchemy import Connection, and_, delete, func, insert, not_, select, update

from dispatch.channels.base import Channel, SendResult
from dispatch.runtime.runs import RunContext
from dispatch.sending.events import record_events
from dispatch.sending.liveness import database_now, holder_identity, holder_is_gone
from dispatch.sending.outcomes import Outcome, apply_outcomes
from dispatch.storage.bulk import chunks
from dispatch.storage.schema import claim_leases, dispatch_runs, invoice_actions
from dispatch.storage.session import Database
from dispatch.vocabulary import ActionStatus, EventName, ManualReason, RunStatus

log = logging.getLogger(__name__)


def _unclaimed(at: dt.datetime) -> dict[str, Any]:
    """The columns of an action whose claim is given back before its hand-over: scheduled
    again, and what the send had written ahead of the hand-over (recipient, delivery time,
    provider, the attempt) did not happen."""
    return {
        "status": ActionStatus.SCHEDULED,
        "claim_token": None,
        "claimed_at": None,
        "claimed_by_run": None,
        "handover_at": None,
        "recipient": None,
        "deliver_at": None,
        "provider": None,
        "attempts": invoice_actions.c.attempts - 1,
        "updated_at": at,
    }


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
    from_status: ActionStatus = ActionStatus.SCHEDULED,
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
                status=ActionStatus.SENDING,
                claim_token=token,
                claimed_at=ctx.as_of,
                claimed_by_run=ctx.run_id,
                handover_at=None,
                attempts=invoice_actions.c.attempts + 1,
                updated_at=ctx.as_of,
            )
            .returning(invoice_actions.c.action_id, invoice_actions.c.invoice_id)
        )
        rows = conn.execute(stmt).tuples().all()
        record_events(conn, rows, event=EventName.CLAIMED, at=ctx.as_of, run_id=ctx.run_id, detail=token)
        won.extend(r[0] for r in rows)
    if won:
        conn.execute(
            insert(claim_leases).values(
                claim_token=token,
                run_id=ctx.run_id,
                holder=holder_identity(),
                claimed_at=func.current_timestamp(),
                heartbeat_at=func.current_timestamp(),
            )
        )
    return won


def mark_handover(conn: Connection, action_ids: Sequence[str], *, token: str) -> set[str]:
    """Record that these actions are about to go out, and renew the claim's lease: one write
    per window of requests. Returns the ids still ours — only those may be handed over (an
    action a finder settled because it thought us dead is not among them)."""
    marked: set[str] = set()
    for part in chunks(list(action_ids)):
        rows = conn.execute(
            update(invoice_actions)
            .where(
                invoice_actions.c.action_id.in_(part),
                invoice_actions.c.status == ActionStatus.SENDING,
                invoice_actions.c.claim_token == token,
            )
            .values(handover_at=func.current_timestamp())
            .returning(invoice_actions.c.action_id)
        ).all()
        marked.update(r[0] for r in rows)
    renew(conn, token)
    return marked


def renew(conn: Connection, token: str) -> None:
    """The claimant is alive: push its lease's heartbeat to now (database clock)."""
    conn.execute(
        update(claim_leases)
        .where(claim_leases.c.claim_token == token)
        .values(heartbeat_at=func.current_timestamp())
    )


def end_lease(conn: Connection, token: str) -> None:
    """The claimant is done with ``token`` (every action has its outcome)."""
    conn.execute(delete(claim_leases).where(claim_leases.c.claim_token == token))


def release(conn: Connection, action_ids: Sequence[str], *, token: str, ctx: RunContext, why: str) -> int:
    """Give claims back untouched (the batch stopped before handing them over)."""
    n = 0
    for part in chunks(list(action_ids)):
        rows = (
            conn.execute(
                update(invoice_actions)
                .where(
                    invoice_actions.c.action_id.in_(part),
                    invoice_actions.c.status == ActionStatus.SENDING,
                    invoice_actions.c.claim_token == token,
                )
                .values(_unclaimed(ctx.as_of))
                .returning(invoice_actions.c.action_id, invoice_actions.c.invoice_id)
            )
            .tuples()
            .all()
        )
        record_events(conn, rows, event=EventName.RELEASED, at=ctx.as_of, run_id=ctx.run_id, detail=why)
        n += len(rows)
    return n


def dead_claims(
    conn: Connection,
    lease: dt.timedelta,
    *,
    same_scope_prefix: str | None = None,
    own_token: str | None = None,
) -> dict[str, str]:
    """Claim tokens left ``sending`` by a claimant that is gone, with why it is judged gone.

    Run-wide: the lease was not renewed for longer than ``lease`` (database clock), or the
    claimant's process is gone from this machine, or its run is recorded failed, or the claim
    has no lease at all (made before leases existed). Never the as-of clock: a live claimant
    is left alone by a run of any as-of instant. With ``same_scope_prefix``: every claim an
    earlier try of this very task made (Airflow runs one try of a task at a time).
    """
    stmt = (
        select(
            invoice_actions.c.claim_token,
            claim_leases.c.holder,
            claim_leases.c.heartbeat_at,
            dispatch_runs.c.status.label("run_status"),
        )
        .select_from(
            invoice_actions.outerjoin(
                claim_leases, claim_leases.c.claim_token == invoice_actions.c.claim_token
            ).outerjoin(dispatch_runs, dispatch_runs.c.run_id == invoice_actions.c.claimed_by_run)
        )
        .where(invoice_actions.c.status == ActionStatus.SENDING, invoice_actions.c.claim_token.is_not(None))
        .distinct()
    )
    if same_scope_prefix:
        stmt = stmt.where(
            invoice_actions.c.claim_token.startswith(same_scope_prefix, autoescape=True),
            invoice_actions.c.claim_token != (own_token or ""),
        )
    rows = conn.execute(stmt).all()
    if same_scope_prefix:
        return {r.claim_token: "an earlier try of this task" for r in rows}
    cutoff = database_now(conn) - lease
    dead: dict[str, str] = {}
    for r in rows:  # one row per claim (a batch), not per action
        if r.claim_token == own_token:
            continue
        if r.run_status == RunStatus.FAILED:
            dead[r.claim_token] = "its run is recorded failed"
        elif r.heartbeat_at is None:
            dead[r.claim_token] = "the claim has no lease"
        elif r.heartbeat_at < cutoff:
            dead[r.claim_token] = f"its lease was not renewed since {r.heartbeat_at:%Y-%m-%d %H:%M:%SZ}"
        elif holder_is_gone(r.holder):
            dead[r.claim_token] = "its process is gone"
    return dead


def release_never_handed_over(conn: Connection, token: str, ctx: RunContext, why: str) -> int:
    """A dead claim's actions outside any recorded window: back to ``scheduled``, to be sent
    by the run that found them (one guarded UPDATE, so two finders release each once)."""
    rows = (
        conn.execute(
            update(invoice_actions)
            .where(
                invoice_actions.c.claim_token == token,
                invoice_actions.c.status == ActionStatus.SENDING,
                invoice_actions.c.handover_at.is_(None),
            )
            .values(_unclaimed(ctx.as_of))
            .returning(invoice_actions.c.action_id, invoice_actions.c.invoice_id)
        )
        .tuples()
        .all()
    )
    record_events(
        conn,
        rows,
        event=EventName.CLAIM_RELEASED,
        at=ctx.as_of,
        run_id=ctx.run_id,
        detail=f"left sending by a dead run ({why}); never handed over",
    )
    return len(rows)


def in_flight_actions(conn: Connection, token: str) -> pd.DataFrame:
    """A dead claim's actions of its recorded window(s): they may have been handed over."""
    stmt = select(
        invoice_actions.c.action_id,
        invoice_actions.c.invoice_id,
        invoice_actions.c.channel,
        invoice_actions.c.recipient,
        invoice_actions.c.deliver_at,
        invoice_actions.c.attempts,
    ).where(invoice_actions.c.claim_token == token, invoice_actions.c.status == ActionStatus.SENDING)
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
    """Settle claims of dead claimants, at most once each (every write is guarded by the old
    token), one transaction per claim.

    Actions never handed over go back to ``scheduled``. For those of a window in flight, the
    channel is asked: where it can tell (the outbox: the file exists or not; the print API
    and SendGrid's activity look-up: the provider has the message or not) the action is
    settled accordingly — sent, or back to ``scheduled`` for this run to send; where it
    cannot, it becomes manual ``delivery_unknown`` for a person to check, never re-sent
    (SPEC B1).
    """
    counts: dict[str, int] = {}

    def add(more: dict[str, int]) -> None:
        for k, v in more.items():
            counts[k] = counts.get(k, 0) + v

    with db.read() as conn:
        dead = dead_claims(conn, lease, same_scope_prefix=same_scope_prefix, own_token=own_token)
    for token, why in dead.items():
        with db.tx() as conn:
            released = release_never_handed_over(conn, token, ctx, why)
            if released:
                add({EventName.CLAIM_RELEASED: released})
            flight = in_flight_actions(conn, token)
            outcomes = [_settle_one(rec, channels, why) for rec in flight.itertuples(index=False)]
            add(apply_outcomes(conn, outcomes, token=token, at=ctx.as_of, run_id=ctx.run_id))
            end_lease(conn, token)
    if not same_scope_prefix:
        with db.tx() as conn:
            _forget_finished_leases(conn, lease)
    if counts:
        log.warning("settled claims left by dead runs: %s", counts)
    return counts


def _settle_one(rec, channels: dict[str, Channel], why: str) -> Outcome:  # type: ignore[no-untyped-def]
    channel = channels.get(rec.channel)
    known = channel.was_handed_over(rec.action_id) if channel is not None else None
    if isinstance(known, SendResult):
        return Outcome(
            action_id=rec.action_id,
            invoice_id=rec.invoice_id,
            status=ActionStatus.SENT,
            event=EventName.SETTLED_SENT,
            detail=f"left sending by a dead run ({why}); {known.provider} has the message",
            recipient=rec.recipient,
            deliver_at=_aware(rec.deliver_at) or known.deliver_at,
            provider=known.provider,
            provider_message_id=known.provider_message_id,
        )
    if known is False:
        return Outcome(
            action_id=rec.action_id,
            invoice_id=rec.invoice_id,
            status=ActionStatus.SCHEDULED,
            event=EventName.CLAIM_RELEASED,
            detail=f"left sending by a dead run ({why}); the provider does not have the message",
        )
    return Outcome.manual(
        action_id=rec.action_id,
        invoice_id=rec.invoice_id,
        reason=ManualReason.DELIVERY_UNKNOWN,
        detail=f"left sending by a dead run ({why}) while being handed over; "
        "the provider may or may not have accepted it",
        recipient=rec.recipient,
        deliver_at=_aware(rec.deliver_at),
    )


def _aware(value) -> dt.datetime | None:  # type: ignore[no-untyped-def]
    if value is None or pd.isna(value):
        return None
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def _forget_finished_leases(conn: Connection, lease: dt.timedelta) -> None:
    """Leases whose claims all have their outcome (a claimant that stopped without ending its
    lease): kept until they are past the lease, then dropped."""
    holding = select(invoice_actions.c.claim_token).where(
        invoice_actions.c.status == ActionStatus.SENDING, invoice_actions.c.claim_token.is_not(None)
    )
    conn.execute(
        delete(claim_leases).where(
            claim_leases.c.heartbeat_at < database_now(conn) - lease,
            not_(claim_leases.c.claim_token.in_(holding)),
        )
    )
