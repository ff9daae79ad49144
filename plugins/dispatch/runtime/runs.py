"""A run: one execution of the pipeline as of one instant (SPEC "Time").

Everything a run records uses ``as_of``, never the wall clock, so a replay is
deterministic; only ``started_at``/``finished_at`` of the run row are wall-clock, for
operators.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from dataclasses import dataclass

from sqlalchemy import Connection, select, update

from dispatch.rules.horizon import configured_schedule, run_horizon
from dispatch.storage.bulk import insert_ignore
from dispatch.storage.schema import dispatch_runs
from dispatch.storage.session import Database
from dispatch.vocabulary import RunStatus


@dataclass(frozen=True)
class RunContext:
    """Who is running, as of when, and until when the run is responsible (the horizon)."""

    run_id: str
    as_of: dt.datetime
    horizon: dt.datetime

    @staticmethod
    def new(as_of: dt.datetime, run_id: str | None = None, horizon: dt.datetime | None = None) -> RunContext:
        """A run as of ``as_of``; without a ``horizon``, the next fire time of the DAG's
        schedule (``DISPATCH_SCHEDULE_CRON``/``_TZ``), so ``dispatch run`` covers what the
        DAG's run at that instant would."""
        as_of = as_utc(as_of)
        run_id = run_id or f"cli__{as_of:%Y%m%dT%H%M%SZ}__{uuid.uuid4().hex[:8]}"
        if horizon is None:
            return RunContext(run_id, as_of, run_horizon(as_of, configured_schedule(os.environ)))
        return RunContext(run_id, as_of, as_utc(horizon))


def as_utc(value: dt.datetime) -> dt.datetime:
    """An aware UTC instant; a naive value is taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def wall_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def start_run(db: Database, ctx: RunContext) -> None:
    """Record the run (idempotent: a retried first task finds it already there)."""
    with db.tx() as conn:
        insert_ignore(
            conn,
            dispatch_runs,
            [
                {
                    "run_id": ctx.run_id,
                    "as_of": ctx.as_of,
                    "horizon": ctx.horizon,
                    "started_at": wall_clock(),
                    "status": RunStatus.RUNNING,
                }
            ],
            ["run_id"],
        )
        conn.execute(
            update(dispatch_runs)
            .where(dispatch_runs.c.run_id == ctx.run_id, dispatch_runs.c.status == RunStatus.FAILED)
            .values(status=RunStatus.RUNNING, finished_at=None)
        )


def finish_run(conn: Connection, run_id: str, counts: dict, status: str = RunStatus.SUCCEEDED) -> None:
    conn.execute(
        update(dispatch_runs)
        .where(dispatch_runs.c.run_id == run_id)
        .values(status=status, finished_at=wall_clock(), counts=counts)
    )


def fail_run(db: Database, run_id: str) -> None:
    """Mark the run failed, so that actions it left ``sending`` are settled by the next run
    without waiting for the claim lease to run out."""
    with db.tx() as conn:
        conn.execute(
            update(dispatch_runs)
            .where(dispatch_runs.c.run_id == run_id, dispatch_runs.c.status == RunStatus.RUNNING)
            .values(status=RunStatus.FAILED, finished_at=wall_clock())
        )


def run_status(conn: Connection, run_id: str) -> str | None:
    return conn.execute(select(dispatch_runs.c.status).where(dispatch_runs.c.run_id == run_id)).scalar()
