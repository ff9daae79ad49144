"""Stage 4, compute due sends: which scheduled actions this run hands over, in batches.

The due rule (SPEC "Time") is applied to the whole set of scheduled actions at once
(:func:`dispatch.scheduling.classify_due`); the result is staged in ``due_sends`` keyed by
run, so each dispatch batch (one Airflow mapped task) reads only its own ids and a retried
task sees the same batch. Manual templates whose day has come enter the to-do list here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import delete, insert, select

from dispatch.channels.base import Channel
from dispatch.channels.factory import capabilities
from dispatch.claims import settle_abandoned
from dispatch.db.bulk import chunks, frame_records, update_rows
from dispatch.db.schema import due_sends, invoice_actions, organizations
from dispatch.db.session import Database
from dispatch.events import record_events
from dispatch.recovery import requeue_fixed
from dispatch.runs import RunContext
from dispatch.scheduling import classify_due
from dispatch.settings import Settings

DEFAULT_MAX_BATCHES = 1024  # Airflow's default max_map_length


@dataclass
class DueSummary:
    due: int = 0
    batches: int = 0
    batch_size: int = 0
    not_due: int = 0
    entered_todo: int = 0
    settled: dict | None = None
    requeued: dict | None = None  # manual actions whose cause was fixed (dispatch.recovery)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def batch_plan(n_due: int, batch_size: int, max_batches: int = DEFAULT_MAX_BATCHES) -> tuple[int, int]:
    """(number of batches, effective batch size): never more than ``max_batches`` batches;
    past that, batches grow instead."""
    if n_due <= 0:
        return 0, batch_size
    size = max(batch_size, math.ceil(n_due / max_batches))
    return math.ceil(n_due / size), size


def scheduled_actions(conn) -> pd.DataFrame:  # type: ignore[no-untyped-def]
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
        .where(invoice_actions.c.status == "scheduled")
        .order_by(invoice_actions.c.scheduled_for, invoice_actions.c.action_id)
    )
    df = pd.read_sql(stmt, conn)
    df["scheduled_for"] = pd.to_datetime(df["scheduled_for"], utc=True)
    return df


def compute_due_sends(
    db: Database,
    ctx: RunContext,
    channels: dict[str, Channel],
    settings: Settings,
    *,
    max_batches: int = DEFAULT_MAX_BATCHES,
) -> DueSummary:
    summary = DueSummary()
    summary.settled = settle_abandoned(db, ctx, channels, settings.claim_lease)
    summary.requeued = requeue_fixed(db, at=ctx.as_of, run_id=ctx.run_id, pdf_root=settings.pdf_root)
    with db.tx() as conn:
        df = scheduled_actions(conn)
        conn.execute(delete(due_sends).where(due_sends.c.run_id == ctx.run_id))
        if df.empty:
            return summary
        verdict = classify_due(df, ctx.as_of, capabilities(channels), horizon=ctx.horizon)
        todo = df.loc[verdict["enters_todo"].to_numpy()]
        if not todo.empty:
            rows = [
                {
                    "action_id": a,
                    "status": "manual",
                    "manual_reason": "manual_template",
                    "updated_at": ctx.as_of,
                }
                for a in todo["action_id"]
            ]
            update_rows(
                conn, invoice_actions, "action_id", rows, guard=invoice_actions.c.status == "scheduled"
            )
            record_events(
                conn,
                zip(todo["action_id"], todo["invoice_id"], strict=True),
                event="manual",
                at=ctx.as_of,
                run_id=ctx.run_id,
                detail="manual_template; its day has come",
            )
            summary.entered_todo = len(todo)
        due = df.loc[verdict["due"].to_numpy()].assign(deliver_at=verdict.loc[verdict["due"], "deliver_at"])
        n_batches, size = batch_plan(len(due), settings.batch_size, max_batches)
        staged = pd.DataFrame(
            {
                "run_id": ctx.run_id,
                "action_id": due["action_id"].to_numpy(),
                "batch_no": (pd.RangeIndex(len(due)) // size).to_numpy() if len(due) else [],
                "deliver_at": due["deliver_at"].to_numpy(),
            }
        )
        for part in chunks(frame_records(staged), 5000):
            conn.execute(insert(due_sends), list(part))
        summary.due = len(due)
        summary.batches = n_batches
        summary.batch_size = size
        summary.not_due = len(df) - len(due) - summary.entered_todo
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
