"""Stage 4, compute due sends: which scheduled actions this run hands over, in batches.

Only the actions that may be due are read, through the index on (status, scheduled_for):
the SQL range stops at the horizon (channels that schedule) or at the run's local day (the
others), so actions scheduled for later days cost nothing, however many there are. The due
rule (SPEC "Time", :func:`dispatch.rules.scheduling.classify_due`) is applied to those, a page at a
time; the result is staged in ``due_sends`` keyed by run, so each dispatch batch (one
Airflow mapped task) reads only its own ids and a retried task sees the same batch. Manual
templates whose day has come enter the to-do list here.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import delete, func, select, tuple_

from dispatch.channels.base import Channel
from dispatch.channels.factory import capabilities
from dispatch.config.settings import Settings
from dispatch.people.recovery import requeue_fixed
from dispatch.rules.batching import DEFAULT_MAX_BATCHES
from dispatch.rules.scheduling import classify_due
from dispatch.runtime.runs import RunContext
from dispatch.sending.claims import settle_abandoned
from dispatch.storage.bulk import append_rows, update_rows
from dispatch.storage.schema import action_events, due_sends, invoice_actions, organizations
from dispatch.storage.session import Database


@dataclass
class DueSummary:
    due: int = 0
    batches: int = 0
    batch_size: int = 0
    not_due: int = 0
    entered_todo: int = 0
    settled: dict | None = None
    requeued: dict | None = None  # manual actions whose cause was fixed (dispatch.people.recovery)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def batch_plan(n_due: int, batch_size: int, max_batches: int = DEFAULT_MAX_BATCHES) -> tuple[int, int]:
    """(number of batches, effective batch size): never more than ``max_batches`` batches;
    past that, batches grow instead."""
    if n_due <= 0:
        return 0, batch_size
    size = max(batch_size, math.ceil(n_due / max_batches))
    return math.ceil(n_due / size), size


#: Actions classified per chunk: memory stays flat whatever the number of due actions.
CHUNK_ROWS = 50_000
#: How far past ``as_of`` an action may be scheduled and still be due under the local-date
#: rule: its scheduled instant lies on its scheduled local day, and that day is at most the
#: run's local day, which ``as_of`` lies in and which lasts at most 25 hours (a DST change):
#: so it is before ``as_of`` + 25 hours in any zone. A wider reach would read, every day, the
#: history's actions scheduled for the next days only to find them not due.
LOCAL_DAY_REACH = dt.timedelta(hours=25)


def due_bound(ctx: RunContext) -> dt.datetime:
    """No action scheduled at or after this instant can be due or enter the to-do list in
    this run: channels that schedule stop at the horizon, the others at their local day."""
    return max(ctx.horizon, ctx.as_of + LOCAL_DAY_REACH)


def scheduled_actions(  # type: ignore[no-untyped-def]
    conn, ctx: RunContext, after: tuple | None = None, limit: int | None = None, *, unscheduled: bool = False
):
    """Scheduled actions that may be due in this run, in (scheduled_for, action_id) order.

    The range ``status = 'scheduled' AND scheduled_for < due_bound`` is read through the index
    on (status, scheduled_for): actions scheduled for later days are never read. ``after``
    and ``limit`` page through it by keyset. ``unscheduled`` reads instead the (never
    expected) scheduled actions without an instant, which the rule must still see. The exact
    rule (:func:`classify_due`) is then applied to each page."""
    stmt = (
        select(
            invoice_actions.c.action_id,
            invoice_actions.c.invoice_id,
            invoice_actions.c.channel,
            invoice_actions.c.automatic,
            invoice_actions.c.scheduled_for,
            invoice_actions.c.scheduled_local_date,
            organizations.c.timezone,
        )
        .join(organizations, organizations.c.org_id == invoice_actions.c.org_id)
        .where(
            invoice_actions.c.status == "scheduled",
            invoice_actions.c.scheduled_for.is_(None)
            if unscheduled
            else invoice_actions.c.scheduled_for < due_bound(ctx),
        )
        .order_by(invoice_actions.c.scheduled_for, invoice_actions.c.action_id)
    )
    if after is not None and not unscheduled:
        stmt = stmt.where(
            tuple_(invoice_actions.c.scheduled_for, invoice_actions.c.action_id) > tuple_(*after)
        )
    if limit is not None:
        stmt = stmt.limit(limit)
    df = pd.read_sql(stmt, conn)
    df["scheduled_for"] = pd.to_datetime(df["scheduled_for"], utc=True)
    return df


def _count_scheduled(conn) -> int:  # type: ignore[no-untyped-def]
    return int(
        conn.execute(
            select(func.count()).select_from(invoice_actions).where(invoice_actions.c.status == "scheduled")
        ).scalar()
        or 0
    )


def _enter_todo(conn, todo: pd.DataFrame, ctx: RunContext) -> int:  # type: ignore[no-untyped-def]
    """Manual templates whose day has come join the to-do list (guarded: still scheduled)."""
    rows = pd.DataFrame(
        {
            "action_id": todo["action_id"].to_numpy(),
            "status": "manual",
            "manual_reason": "manual_template",
            "updated_at": ctx.as_of,
        }
    )
    update_rows(conn, invoice_actions, "action_id", rows, guard=invoice_actions.c.status == "scheduled")
    events = pd.DataFrame(
        {
            "action_id": todo["action_id"].to_numpy(),
            "invoice_id": todo["invoice_id"].to_numpy(),
            "detail": "manual_template; its day has come",
        }
    ).assign(at=ctx.as_of, event="manual", run_id=ctx.run_id)
    append_rows(conn, action_events, events)
    return len(todo)


def compute_due_sends(
    db: Database,
    ctx: RunContext,
    channels: dict[str, Channel],
    settings: Settings,
    *,
    max_batches: int = DEFAULT_MAX_BATCHES,
    chunk_rows: int | None = None,
) -> DueSummary:
    """Stage the run's due sends in batches (``due_sends``); manual templates whose day has
    come enter the to-do list. Reads only the actions that may be due (see
    :func:`scheduled_actions`), a page at a time."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    summary = DueSummary()
    summary.settled = settle_abandoned(db, ctx, channels, settings.claim_lease)
    summary.requeued = requeue_fixed(db, at=ctx.as_of, run_id=ctx.run_id, pdf_root=settings.pdf_root)
    rules = capabilities(channels)
    with db.tx() as conn:
        conn.execute(delete(due_sends).where(due_sends.c.run_id == ctx.run_id))
        n_scheduled = _count_scheduled(conn)
        # First pass: classify page by page; due ids are kept (ids and instants only) so the
        # batch size, which depends on how many are due, is known before staging.
        due_parts: list[pd.DataFrame] = []
        after: tuple | None = None
        unscheduled = False
        while True:
            df = scheduled_actions(
                conn, ctx, after, None if unscheduled else chunk_rows, unscheduled=unscheduled
            )
            if df.empty and unscheduled:
                break
            if df.empty or (len(df) < chunk_rows and not unscheduled):
                unscheduled = True  # the last page of the range; the instant-less ones next
            if df.empty:
                continue
            last = df.iloc[-1]
            after = (last["scheduled_for"].to_pydatetime(), str(last["action_id"]))
            verdict = classify_due(df, ctx.as_of, rules, horizon=ctx.horizon)
            todo = df.loc[verdict["enters_todo"].to_numpy()]
            if not todo.empty:
                summary.entered_todo += _enter_todo(conn, todo, ctx)
            is_due = verdict["due"].to_numpy()
            due_parts.append(
                pd.DataFrame(
                    {
                        "action_id": df["action_id"].to_numpy()[is_due],
                        "deliver_at": verdict["deliver_at"].to_numpy()[is_due],
                    }
                )
            )
            if pd.isna(last["scheduled_for"]):
                break
        due = pd.concat(due_parts, ignore_index=True) if due_parts else pd.DataFrame()
        n_due = len(due)
        n_batches, size = batch_plan(n_due, settings.batch_size, max_batches)
        if n_due:
            staged = pd.DataFrame(
                {
                    "run_id": ctx.run_id,
                    "action_id": due["action_id"].to_numpy(),
                    "batch_no": (np.arange(n_due) // size).astype("int64"),
                    "deliver_at": pd.to_datetime(due["deliver_at"], utc=True),
                }
            )
            append_rows(conn, due_sends, staged)
        summary.due = n_due
        summary.batches = n_batches
        summary.batch_size = size
        summary.not_due = n_scheduled - n_due - summary.entered_todo
    return summary


def batch_action_ids(db: Database, run_id: str, batch_no: int) -> pd.DataFrame:
    with db.read() as conn:
        df = pd.read_sql(
            select(due_sends.c.action_id, due_sends.c.deliver_at).where(
                due_sends.c.run_id == run_id, due_sends.c.batch_no == batch_no
            ),
            conn,
        )
    df["deliver_at"] = pd.to_datetime(df["deliver_at"], utc=True)
    return df
