"""Stage 6, write back: invoice sending statuses from their actions, and the run's counts.

Invoices follow their action in one set-based UPDATE per outcome, so the invoice tables
analysts read never disagree with the actions for longer than one task; the same function
serves people's operations for a handful of ids. The counts prove SPEC B2: every imported
invoice is in exactly one outcome, and the outcomes add up.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, and_, case, exists, func, select, update

from dispatch.runtime.runs import RunContext, finish_run
from dispatch.sending.events import EVENTS
from dispatch.storage.schema import (
    MANUAL_REASONS,
    action_events,
    invoice_actions,
    invoices,
    rejected_invoices,
    template_queue,
)
from dispatch.storage.session import Database

A = invoice_actions


def _action_of_invoice(*conds):  # type: ignore[no-untyped-def]
    return and_(A.c.invoice_id == invoices.c.invoice_id, *conds)


def sync_invoice_statuses(conn: Connection, invoice_ids: Sequence[str] | None = None) -> int:
    """Move ``to_send`` invoices whose action is settled to sent / cancelled."""
    scope = [invoices.c.sending_status == "to_send"]
    if invoice_ids is not None:
        scope.append(invoices.c.invoice_id.in_(list(invoice_ids)))
    sent_manually = exists().where(
        action_events.c.action_id == A.c.action_id, action_events.c.event == "sent_manually"
    )
    settled_at = select(A.c.updated_at).where(_action_of_invoice()).scalar_subquery()
    how = (
        select(case((A.c.status == "ignored", "ignored"), (sent_manually, "manual"), else_="automatic"))
        .where(_action_of_invoice())
        .scalar_subquery()
    )
    n = conn.execute(
        update(invoices)
        .where(*scope, exists().where(_action_of_invoice(A.c.status.in_(("sent", "ignored")))))
        .values(sending_status="sent", sent_at=settled_at, sent_how=how)
    ).rowcount
    n += conn.execute(
        update(invoices)
        .where(*scope, exists().where(_action_of_invoice(A.c.status == "cancelled")))
        .values(sending_status="cancelled")
    ).rowcount
    return int(n or 0)


OUTCOMES = (
    "sent",
    "manual",
    "ignored_or_marked_sent",
    "cancelled",
    "scheduled",
    "without_template",
    "not_required",
)


def _count(conn: Connection, stmt) -> int:  # type: ignore[no-untyped-def]
    return int(conn.execute(stmt).scalar() or 0)


def outcome_totals(conn: Connection) -> dict[str, int]:
    """Every imported invoice in exactly one outcome (SPEC B2), plus rejected rows.

    Counts from indexes, none of which reads invoice rows into Python or joins the whole
    history: invoices per (sending_status, sent_how) from one pass over the index on those
    two columns; of the to-send ones, the manual actions (the to-do list, joined to their
    invoices), the open actions (the status index), the template queue's invoices without
    an action, and the rest — settled actions not yet synced — by difference."""
    totals = {k: 0 for k in OUTCOMES}
    # one pass over the (sending_status, sent_how) index counts every status, to-send included
    by_status = conn.execute(
        select(invoices.c.sending_status, invoices.c.sent_how, func.count()).group_by(
            invoices.c.sending_status, invoices.c.sent_how
        )
    ).all()
    n_to_send = 0
    for status, how, n in by_status:
        if status == "to_send":
            n_to_send += int(n)
            continue
        if status == "sent":
            key = "ignored_or_marked_sent" if how in ("ignored", "marked_sent") else "sent"
        elif status == "cancelled":
            key = "cancelled"
        else:  # not_required, or not yet tagged
            key = "not_required"
        totals[key] += int(n)
    to_send = invoices.c.sending_status == "to_send"
    totals["manual"] = _count(
        conn,
        select(func.count())
        .select_from(A.join(invoices, invoices.c.invoice_id == A.c.invoice_id))
        .where(A.c.status == "manual", to_send),
    )
    # an open action always belongs to a to-send invoice (marking an invoice sent ignores its
    # open action, a void one cancels it): counted from the status index alone
    totals["scheduled"] = _count(
        conn, select(func.count()).select_from(A).where(A.c.status.in_(("scheduled", "sending")))
    )
    totals["without_template"] = _count(
        conn,
        select(func.count())
        .select_from(template_queue.join(invoices, invoices.c.invoice_id == template_queue.c.invoice_id))
        .where(to_send, ~exists().where(A.c.invoice_id == template_queue.c.invoice_id)),
    )
    # the rest of the to-send invoices have a settled action the next write-back syncs
    totals["sent"] += n_to_send - totals["manual"] - totals["scheduled"] - totals["without_template"]
    totals["imported"] = sum(totals[k] for k in OUTCOMES)
    never_imported = ~exists().where(invoices.c.invoice_id == rejected_invoices.c.invoice_id)
    totals["rejected"] = int(
        conn.execute(
            select(
                func.count(
                    func.distinct(func.coalesce(rejected_invoices.c.invoice_id, rejected_invoices.c.row))
                )
            ).where(never_imported)
        ).scalar()
        or 0
    )
    return totals


def run_counts(conn: Connection, run_id: str) -> dict[str, int]:
    """What this run did, from the event log and the import columns."""
    events: dict[str, int] = dict(
        conn.execute(
            select(action_events.c.event, func.count())
            .where(action_events.c.run_id == run_id)
            .group_by(action_events.c.event)
        )
        .tuples()
        .all()
    )
    manual_reasons: dict[str, int] = dict(
        conn.execute(
            select(A.c.manual_reason, func.count())
            .select_from(action_events.join(A, A.c.action_id == action_events.c.action_id))
            .where(
                action_events.c.run_id == run_id, action_events.c.event == "manual", A.c.status == "manual"
            )
            .group_by(A.c.manual_reason)
        )
        .tuples()
        .all()
    )
    imported = conn.execute(
        select(func.count()).select_from(invoices).where(invoices.c.first_seen_run_id == run_id)
    ).scalar()
    rejected = conn.execute(
        select(func.count()).select_from(rejected_invoices).where(rejected_invoices.c.run_id == run_id)
    ).scalar()
    # every key always present, zeros included (docs/data-dictionary.md)
    out = {f"events.{k}": 0 for k in EVENTS} | {f"manual.{k}": 0 for k in MANUAL_REASONS}
    out.update({f"events.{k}": int(v) for k, v in events.items()})
    out.update({f"manual.{k}": int(v) for k, v in manual_reasons.items() if k})
    out["imported"] = int(imported or 0)
    out["rejected"] = int(rejected or 0)
    return out


def write_back(db: Database, ctx: RunContext, *, finish: bool = True, status: str = "succeeded") -> dict:
    """Sync invoices, compute counts and close the run as ``status`` (one transaction);
    returns {'run': …, 'totals': …, 'synced': n}."""
    with db.tx() as conn:
        synced = sync_invoice_statuses(conn)
        counts = {"run": run_counts(conn, ctx.run_id), "totals": outcome_totals(conn), "synced": synced}
        if finish:
            finish_run(conn, ctx.run_id, counts, status=status)
    return counts
