"""Stage 3, resolve templates: one invoicing action per ``to_send`` invoice (R5–R8).

The template is the one of the plan assigned to the customer that OWNS the invoice in
the accounting system (R7) — never the parent's: a child without a plan gets no action
(R8) and its invoice stays listed by ``invoices_without_template`` until a plan is
assigned; the next run then creates the action. The action is scheduled at creation
(SPEC "Time") and keeps its template version for good.

The invoices to resolve come from the template queue (``template_queue``, filled by tag):
the day's new to-send invoices and the few still without template, never a search for
missing actions across every to-send invoice of the history.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Connection, delete, func, or_, select

from dispatch.rules.scheduling import scheduled_instants
from dispatch.runtime.runs import RunContext
from dispatch.storage.bulk import append_rows, insert_ignore
from dispatch.storage.schema import (
    action_events,
    customer_plans,
    invoice_actions,
    invoice_templates,
    invoices,
    organizations,
    plans,
    template_queue,
)
from dispatch.storage.session import Database

ACTION_NAMESPACE = uuid.UUID("6f1c8c52-8f7e-4d59-9a53-8c9d2b7f0a11")


def action_id_for(invoice_id: str) -> str:
    """Deterministic: the one action of an invoice always has the same id (and outbox file)."""
    return "act_" + uuid.uuid5(ACTION_NAMESPACE, invoice_id).hex


@dataclass
class ResolveSummary:
    created: int = 0
    without_template: int = 0

    def as_dict(self) -> dict:
        return self.__dict__.copy()


#: Invoices resolved per chunk: memory stays flat whatever the number of new invoices.
CHUNK_ROWS = 50_000


def _has_action():  # type: ignore[no-untyped-def]
    return (
        select(invoice_actions.c.invoice_id)
        .where(invoice_actions.c.invoice_id == invoices.c.invoice_id)
        .exists()
    )


def _queue_page(after: str | None, limit: int):  # type: ignore[no-untyped-def]
    """The next ``limit`` keys of the template queue after ``after`` (a keyset page)."""
    stmt = select(template_queue.c.invoice_id).order_by(template_queue.c.invoice_id).limit(limit)
    if after is not None:
        stmt = stmt.where(template_queue.c.invoice_id > after)
    return stmt.subquery("page")


def _candidates(conn: Connection, page) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """The invoices of a queue page that are to send, have no action yet and whose owner has
    a plan with a template. The query starts from the page (never from every to-send
    invoice), whatever the planner's statistics say after a bulk import."""
    stmt = (
        select(
            invoices.c.invoice_id,
            invoices.c.org_id,
            invoices.c.issue_date,
            invoices.c.first_seen_at,
            plans.c.plan_id,
            invoice_templates.c.template_id,
            invoice_templates.c.channel,
            invoice_templates.c.automatic,
            invoice_templates.c.delay_days,
            func.coalesce(invoice_templates.c.owner_user_id, organizations.c.default_owner).label(
                "owner_user_id"
            ),
            organizations.c.timezone,
            organizations.c.send_time,
            # the org's holiday calendar: `holidays`, else its country
            func.coalesce(organizations.c.holidays, organizations.c.country).label("holidays"),
        )
        .select_from(page)
        .join(invoices, invoices.c.invoice_id == page.c.invoice_id)
        .join(customer_plans, customer_plans.c.customer_id == invoices.c.customer_id)
        .join(plans, (plans.c.plan_id == customer_plans.c.plan_id) & (plans.c.org_id == invoices.c.org_id))
        .join(invoice_templates, invoice_templates.c.template_id == plans.c.template_id)
        .join(organizations, organizations.c.org_id == invoices.c.org_id)
        .where(invoices.c.sending_status == "to_send", ~_has_action())
        .order_by(invoices.c.invoice_id)
    )
    return pd.read_sql(stmt, conn)


def _settle_queue(conn: Connection, after: str | None, upto: str | None) -> None:
    """Take off the queue, for keys in (``after``, ``upto``], the invoices that have their
    action now or are no longer to send (marked sent, cancelled); the rest — no template
    yet — stay, for the next run to retry."""
    done = or_(
        ~select(invoices.c.invoice_id)
        .where(invoices.c.invoice_id == template_queue.c.invoice_id, invoices.c.sending_status == "to_send")
        .exists(),
        select(invoice_actions.c.invoice_id)
        .where(invoice_actions.c.invoice_id == template_queue.c.invoice_id)
        .exists(),
    )
    stmt = delete(template_queue).where(done)
    if after is not None:
        stmt = stmt.where(template_queue.c.invoice_id > after)
    if upto is not None:
        stmt = stmt.where(template_queue.c.invoice_id <= upto)
    conn.execute(stmt)


def _actions(cand: pd.DataFrame, ctx: RunContext) -> pd.DataFrame:
    cand["first_seen_at"] = pd.to_datetime(cand["first_seen_at"], utc=True)
    sched = scheduled_instants(cand)
    actions = pd.DataFrame(
        {
            "action_id": cand["invoice_id"].map(action_id_for),
            "invoice_id": cand["invoice_id"],
            "org_id": cand["org_id"],
            "plan_id": cand["plan_id"],
            "template_id": cand["template_id"],
            "channel": cand["channel"],
            "automatic": cand["automatic"].astype(bool),
            "owner_user_id": cand["owner_user_id"],
            "scheduled_for": pd.to_datetime(sched["scheduled_for"], utc=True),
            "scheduled_local_date": pd.to_datetime(sched["scheduled_local_date"]).dt.date,
        }
    )
    return actions.assign(status="scheduled", attempts=0, created_at=ctx.as_of, updated_at=ctx.as_of)


def _created_events(actions: pd.DataFrame, created: list[tuple], ctx: RunContext) -> pd.DataFrame:
    """One ``created`` event per action actually inserted (a concurrent run's are not ours)."""
    described = (
        "template "
        + actions["template_id"]
        + ", "
        + actions["channel"]
        + ", "
        + actions["automatic"].map({True: "automatic", False: "manual"})
        + ", scheduled for "
        + actions["scheduled_for"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    events = pd.DataFrame(
        {"action_id": actions["action_id"], "invoice_id": actions["invoice_id"], "detail": described}
    )
    if len(created) != len(actions):
        events = events[events["action_id"].isin([a for a, _ in created])]
    return events.assign(at=ctx.as_of, event="created", run_id=ctx.run_id)


def resolve_templates(db: Database, ctx: RunContext, *, chunk_rows: int | None = None) -> ResolveSummary:
    """Create the missing actions of the queued invoices, one keyset page at a time, in one
    transaction; the cost follows the day's new invoices plus those still without template."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    summary = ResolveSummary()
    with db.tx() as conn:
        after: str | None = None
        while True:
            page = _queue_page(after, chunk_rows)
            last, n_page = conn.execute(select(func.max(page.c.invoice_id), func.count())).one()
            if not n_page:
                break
            cand = _candidates(conn, page)
            if not cand.empty:
                actions = _actions(cand, ctx)
                created = (
                    insert_ignore(
                        conn, invoice_actions, actions, ["invoice_id"], returning=["action_id", "invoice_id"]
                    )
                    or []
                )
                append_rows(conn, action_events, _created_events(actions, created, ctx))
                summary.created += len(created)
            _settle_queue(conn, after, last)
            after = str(last)
            if n_page < chunk_rows:
                break
        summary.without_template = int(
            conn.execute(select(func.count()).select_from(template_queue)).scalar() or 0
        )
    return summary
