"""``dispatch runs``: the runs recorded in ``dispatch_runs``, newest first, with their main
counts and how long they took — what an operator checks after a night's run."""

from __future__ import annotations

import json

import pandas as pd
from sqlalchemy import Engine, select

from dispatch.storage.schema import dispatch_runs
from dispatch.vocabulary import EventName

COLUMNS = [
    "run_id",
    "as_of",
    "status",
    "duration_s",
    "imported",
    "rejected",
    "sent",
    "to_do",
    "cancelled",
    "started_at",
    "finished_at",
    "counts",
]


def _run_count(counts: object, key: str) -> int:
    if isinstance(counts, str):
        counts = json.loads(counts)
    run = counts.get("run", {}) if isinstance(counts, dict) else {}
    return int(run.get(key, 0) or 0)


def list_runs(engine: Engine, limit: int = 20) -> pd.DataFrame:
    """The last ``limit`` runs (by as-of instant, then start), newest first."""
    R = dispatch_runs
    stmt = select(R).order_by(R.c.as_of.desc(), R.c.started_at.desc()).limit(limit)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    df = pd.DataFrame(rows, columns=[c.name for c in R.columns])
    for col in ("as_of", "started_at", "finished_at", "horizon"):
        df[col] = pd.to_datetime(df[col], utc=True)
    df["duration_s"] = ((df["finished_at"] - df["started_at"]).dt.total_seconds()).round(1)
    counts = df["counts"].tolist()
    df["imported"] = [_run_count(c, "imported") for c in counts]
    df["rejected"] = [_run_count(c, "rejected") for c in counts]
    df["sent"] = [_run_count(c, f"events.{EventName.SENT}") for c in counts]
    df["to_do"] = [_run_count(c, f"events.{EventName.MANUAL}") for c in counts]
    df["cancelled"] = [_run_count(c, f"events.{EventName.CANCELLED}") for c in counts]
    df["counts"] = [json.loads(c) if isinstance(c, str) else c for c in counts]
    return df[COLUMNS]
