"""Stage 5, dispatch: claim a batch of due actions, re-check, address, render, hand over,
record — in that order, so that a crash at any point leaves a state the next run settles
without sending anything twice (SPEC B1):

* dies before the claim: nothing happened; the actions are still ``scheduled``;
* dies after the claim, before or during the hand-over: the actions stay ``sending`` until
  the lease runs out (or the run is marked failed, or the task's next try starts), then
  are settled — the outbox knows whether its file exists; other providers cannot tell, so
  the action goes to a person as ``delivery_unknown``;
* dies after the hand-over, before recording: same as above; never re-sent blindly.

Outcomes are recorded after every chunk of messages, which keeps that window small.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import and_

from dispatch import source
from dispatch.channels.base import Channel, ChannelError, FatalChannelError, SendResult, TransientError
from dispatch.claims import claim, new_token, release, settle_abandoned, token_prefix
from dispatch.db.bulk import update_rows
from dispatch.db.schema import invoice_actions
from dispatch.db.session import Database
from dispatch.due import batch_action_ids
from dispatch.messages import claimed_details, prepare_messages
from dispatch.outcomes import Outcome, apply_outcomes
from dispatch.recipients import pick_recipients
from dispatch.runs import RunContext
from dispatch.settings import Settings

log = logging.getLogger(__name__)
SEND_CHUNK = 100


@dataclass
class BatchSummary:
    batch_no: int = 0
    claimed: int = 0
    events: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"batch_no": self.batch_no, "claimed": self.claimed, "events": dict(self.events)}


def dispatch_batch(
    db: Database,
    accounting,  # type: ignore[no-untyped-def]
    ctx: RunContext,
    batch_no: int,
    channels: dict[str, Channel],
    settings: Settings,
) -> BatchSummary:
    """Send batch ``batch_no`` of the run's due actions (staged by compute_due_sends)."""
    summary = BatchSummary(batch_no=batch_no)
    scope = token_prefix(ctx.run_id, f"b{batch_no}")
    token = new_token(ctx.run_id, f"b{batch_no}")
    # An earlier try of this very task that died left its claims: settle them first.
    summary.events.update(
        settle_abandoned(db, ctx, channels, settings.claim_lease, same_scope_prefix=scope, own_token=token)
    )
    staged = batch_action_ids(db, ctx.run_id, batch_no)
    if staged.empty:
        return summary
    with db.tx() as conn:
        won = claim(conn, staged["action_id"].tolist(), token=token, ctx=ctx)
    summary.claimed = len(won)
    if not won:
        return summary
    deliver_at = {
        a: ts.to_pydatetime() for a, ts in zip(staged["action_id"], staged["deliver_at"], strict=True)
    }
    summary.events.update(send_claimed(db, accounting, ctx, token, deliver_at, channels, settings))
    return summary


def send_claimed(
    db: Database,
    accounting,  # type: ignore[no-untyped-def]
    ctx: RunContext,
    token: str,
    deliver_at: dict[str, dt.datetime],
    channels: dict[str, Channel],
    settings: Settings,
    *,
    manual: bool = False,
) -> Counter:
    """Hand over every action claimed with ``token``; returns counts per event."""
    counts: Counter = Counter()
    with db.read() as conn:
        details = claimed_details(conn, token)
    if details.empty:
        return counts
    recheck = source.recheck_invoices(accounting, details["invoice_id"].tolist())
    contacts = source.read_contacts(accounting, details["customer_id"].tolist())
    regions = dict(
        zip(
            details["org_id"], details["org_country"].where(details["org_country"].notna(), None), strict=True
        )
    )
    recipients = pick_recipients(
        details[["action_id", "customer_id", "channel", "org_id"]], contacts, regions
    )
    prepared = prepare_messages(
        details,
        recheck,
        recipients,
        deliver_at,
        default_sender=settings.mail_from,
        today=ctx.as_of.date(),
        pdf_root=settings.pdf_root,
        pdf_max_bytes=settings.pdf_max_bytes,
    )
    with db.tx() as conn:
        counts.update(apply_outcomes(conn, prepared.outcomes, token=token, at=ctx.as_of, run_id=ctx.run_id))
        # Before anything goes out, the action says to whom, when and through which provider:
        # should this process die mid-send, the person settling it knows what to check (B9).
        update_rows(
            conn,
            invoice_actions,
            "action_id",
            [
                {
                    "action_id": m.action_id,
                    "recipient": ", ".join(m.recipients),
                    "deliver_at": m.deliver_at,
                    "provider": channels[m.channel].provider,
                }
                for m in prepared.messages
            ],
            guard=and_(invoice_actions.c.status == "sending", invoice_actions.c.claim_token == token),
        )

    attempts = dict(zip(details["action_id"], details["attempts"], strict=True))
    by_channel: dict[str, list] = {}
    for m in prepared.messages:
        by_channel.setdefault(m.channel, []).append(m)
    done: set[str] = set()
    for channel_name, msgs in by_channel.items():
        channel = channels[channel_name]
        for start in range(0, len(msgs), SEND_CHUNK):
            chunk = msgs[start : start + SEND_CHUNK]
            try:
                results = channel.send_many(chunk)
            except FatalChannelError as exc:
                # A bad key or host must not turn a day's invoices into manual tasks: record
                # what the provider did accept before the stop, give every other claim back
                # untouched, and fail loudly.
                partial = [
                    _outcome(m, r, attempts.get(m.action_id, 1), settings.max_attempts, manual)
                    for m, r in zip(chunk, exc.results or [None] * len(chunk), strict=True)
                    if r is not None
                ]
                done.update(o.action_id for o in partial)
                pending = [m.action_id for m in prepared.messages if m.action_id not in done]
                with db.tx() as conn:
                    counts.update(apply_outcomes(conn, partial, token=token, at=ctx.as_of, run_id=ctx.run_id))
                    release(conn, pending, token=token, ctx=ctx, why=f"{channel.provider}: {exc}")
                raise
            outcomes = [
                _outcome(m, r, attempts.get(m.action_id, 1), settings.max_attempts, manual)
                for m, r in zip(chunk, results, strict=True)
            ]
            with db.tx() as conn:
                counts.update(apply_outcomes(conn, outcomes, token=token, at=ctx.as_of, run_id=ctx.run_id))
            done.update(m.action_id for m in chunk)
    return counts


def _outcome(
    message,
    result: SendResult | ChannelError,
    attempts: int,
    max_attempts: int,
    manual: bool,  # type: ignore[no-untyped-def]
) -> Outcome:
    recipient = ", ".join(message.recipients)
    if isinstance(result, SendResult):
        return Outcome(
            message.action_id,
            message.invoice_id,
            "sent",
            "sent_manually" if manual else "sent",
            recipient=recipient,
            deliver_at=result.deliver_at,
            provider=result.provider,
            provider_message_id=result.provider_message_id,
            detail=result.note,
        )
    if isinstance(result, TransientError) and attempts < max_attempts and not manual:
        return Outcome(
            message.action_id,
            message.invoice_id,
            "scheduled",
            "retry_later",
            detail=f"attempt {attempts}/{max_attempts}: {result}",
            recipient=recipient,
        )
    return Outcome(
        message.action_id,
        message.invoice_id,
        "manual",
        "manual",
        manual_reason=result.reason,
        detail=str(result),
        recipient=recipient,
    )
