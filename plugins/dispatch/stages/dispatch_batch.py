"""Stage 5, dispatch: claim a batch of due actions, re-check, address, render, hand over,
record — in that order, so that a crash at any point leaves a state the next run settles
without sending anything twice (SPEC B1):

* dies before the claim: nothing happened; the actions are still ``scheduled``;
* dies after the claim: the actions stay ``sending`` until the claimant is known dead (its
  process is gone from this machine, its lease was not renewed on the wall clock, its run is
  recorded failed, or the task's next try starts), whatever the as-of instant of the run that
  finds them. Then the actions outside the recorded hand-over window go back to
  ``scheduled`` and that run sends them; those of the window in flight are settled by the
  channel where it can tell (the outbox's file, the print API's and SendGrid's look-ups),
  else they go to a person as ``delivery_unknown`` — never re-sent blindly.

Before messages go out, one transaction records the outcomes answered so far, marks the
next messages as being handed over and renews the claim's lease
(:func:`dispatch.sending.claims.mark_handover`): no write per message. A sliding channel
(:class:`dispatch.channels.base.SlidingChannel`: SendGrid) pulls the
next marked messages as earlier ones complete, so sending never waits for a window's slowest
request, and it marks no more than its window of requests in flight
(``DISPATCH_SEND_CONCURRENCY`` at most) beyond what is recorded; any other channel is handed
windows of ``DISPATCH_SEND_CONCURRENCY`` messages one after the other. Either way at most
that many actions are uncertain at any moment (the embedded outbox, which settles from its
files, takes windows of :data:`SEND_CHUNK`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, and_

from dispatch.channels.base import (
    Channel,
    ChannelError,
    FatalChannelError,
    Handover,
    OutgoingMessage,
    SendResult,
    TransientError,
    send_through,
)
from dispatch.config.settings import Settings
from dispatch.rules.recipients import pick_recipients
from dispatch.runtime.runs import RunContext
from dispatch.sending.claims import (
    claim,
    end_lease,
    mark_handover,
    new_token,
    release,
    settle_abandoned,
    token_prefix,
)
from dispatch.sending.messages import claimed_details, prepare_messages
from dispatch.sending.outcomes import Outcome, apply_outcomes
from dispatch.stages.compute_due_sends import batch_action_ids
from dispatch.storage import source
from dispatch.storage.bulk import update_rows
from dispatch.storage.schema import invoice_actions
from dispatch.storage.session import Database
from dispatch.vocabulary import ActionStatus, EventName

log = logging.getLogger(__name__)
SEND_CHUNK = 100
#: backends that can tell afterwards, for every message, whether they have it: a window of
#: theirs in flight at a crash costs no person a check, so their windows may be larger
SELF_SETTLING = frozenset({"outbox"})


def window_size(channel: Channel, settings: Settings) -> int:
    """How many messages go to ``channel`` between two records (the requests in flight)."""
    if channel.provider in SELF_SETTLING:
        return SEND_CHUNK
    return max(1, min(settings.send_concurrency, SEND_CHUNK))


@dataclass
class BatchSummary:
    batch_no: int = 0
    claimed: int = 0
    events: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"batch_no": self.batch_no, "claimed": self.claimed, "events": dict(self.events)}


def dispatch_batch(
    db: Database,
    accounting: Engine,
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
    accounting: Engine,
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
        as_of=ctx.as_of,
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
            guard=and_(
                invoice_actions.c.status == ActionStatus.SENDING, invoice_actions.c.claim_token == token
            ),
        )

    attempts = dict(zip(details["action_id"], details["attempts"], strict=True))
    by_channel: dict[str, list[OutgoingMessage]] = {}
    for m in prepared.messages:
        by_channel.setdefault(m.channel, []).append(m)
    done: set[str] = set()
    answered: list[Outcome] = []  # the previous window's outcomes, recorded with the next mark

    def record(conn: Connection) -> None:
        counts.update(apply_outcomes(conn, answered, token=token, at=ctx.as_of, run_id=ctx.run_id))
        done.update(o.action_id for o in answered)
        answered.clear()

    try:
        for channel_name, msgs in by_channel.items():
            channel = channels[channel_name]
            handover = _MarkedHandover(msgs, db, token, record)
            try:
                for m, r in send_through(channel, handover, window_size(channel, settings)):
                    tries = attempts.get(m.action_id, 1)
                    answered.append(_outcome(m, r, tries, settings.max_attempts, manual))
            except FatalChannelError as exc:
                # A bad key or host must not turn a day's invoices into manual tasks: record
                # what the provider did accept before the stop, give every other claim back
                # untouched, and fail loudly.
                with db.tx() as conn:
                    record(conn)
                    pending = [m.action_id for m in prepared.messages if m.action_id not in done]
                    release(conn, pending, token=token, ctx=ctx, why=f"{channel.provider}: {exc}")
                raise
    except BaseException:
        # This claimant stops here: say so, so that whoever finds its claims settles them now
        # rather than when the lease runs out (best effort: the lease covers the rest).
        _drop_lease(db, token)
        raise
    with db.tx() as conn:
        record(conn)
        end_lease(conn, token)
    return counts


class _MarkedHandover(Handover):
    """Hands a channel its next messages only once they are marked as being handed over,
    in the transaction that also records the answers so far and renews the lease
    (:func:`dispatch.sending.claims.mark_handover`): no write per message, and an action no
    longer ours (settled by a run that thought us dead) is never handed out."""

    def __init__(
        self,
        messages: list[OutgoingMessage],
        db: Database,
        token: str,
        record: Callable[[Connection], None],
    ) -> None:
        super().__init__(messages)
        self.db, self.token, self.record = db, token, record

    def allow(self, window: Sequence[OutgoingMessage]) -> Sequence[OutgoingMessage]:
        with self.db.tx() as conn:
            self.record(conn)
            ours = mark_handover(conn, [m.action_id for m in window], token=self.token)
        return [m for m in window if m.action_id in ours]


def _drop_lease(db: Database, token: str) -> None:
    try:
        with db.tx() as conn:
            end_lease(conn, token)
    except Exception:  # the database may be what failed
        log.warning("could not end the lease of claim %s; it runs out on its own", token)


def _outcome(
    message: OutgoingMessage,
    result: SendResult | ChannelError,
    attempts: int,
    max_attempts: int,
    manual: bool,
) -> Outcome:
    recipient = ", ".join(message.recipients)
    if isinstance(result, SendResult):
        return Outcome(
            action_id=message.action_id,
            invoice_id=message.invoice_id,
            status=ActionStatus.SENT,
            event=EventName.SENT_MANUALLY if manual else EventName.SENT,
            recipient=recipient,
            deliver_at=result.deliver_at,
            provider=result.provider,
            provider_message_id=result.provider_message_id,
            detail=result.note,
        )
    if isinstance(result, TransientError) and attempts < max_attempts and not manual:
        return Outcome(
            action_id=message.action_id,
            invoice_id=message.invoice_id,
            status=ActionStatus.SCHEDULED,
            event=EventName.RETRY_LATER,
            detail=f"attempt {attempts}/{max_attempts}: {result}",
            recipient=recipient,
        )
    return Outcome.manual(
        action_id=message.action_id,
        invoice_id=message.invoice_id,
        reason=result.reason,
        detail=str(result),
        recipient=recipient,
    )
