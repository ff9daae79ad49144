"""The whole daily run in one process (``dispatch run``): the stages the DAG runs as tasks.

Each stage is a function taking the dispatch database, the run context and what else it
needs, and returning a small summary; the DAG calls the same functions one per task.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Engine

from dispatch.channels.base import Channel
from dispatch.channels.factory import build_channels, close_channels
from dispatch.config.settings import Settings
from dispatch.errors import DispatchError
from dispatch.runtime.runs import RunContext, fail_run, start_run
from dispatch.stages.compute_due_sends import compute_due_sends
from dispatch.stages.dispatch_batch import BatchSummary, dispatch_batch
from dispatch.stages.extract_invoices import extract_invoices
from dispatch.stages.resolve_templates import resolve_templates
from dispatch.stages.tag_new_invoices import tag_new_invoices
from dispatch.stages.write_back import write_back
from dispatch.storage.engine import make_engine
from dispatch.storage.migrate import is_current
from dispatch.storage.session import Database

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    run_id: str
    as_of: dt.datetime
    horizon: dt.datetime
    stages: dict[str, dict] = field(default_factory=dict)
    counts: dict = field(default_factory=dict)


@dataclass
class Engines:
    dispatch: Engine
    accounting: Engine

    @staticmethod
    def from_settings(settings: Settings) -> Engines:
        return Engines(
            make_engine(settings.dispatch_db_url), make_engine(settings.accounting_db_url, readonly=True)
        )


def ensure_schema(engine: Engine) -> None:
    if not is_current(engine):
        raise DispatchError(
            "the dispatch database is not initialized or not up to date: run `dispatch db init`"
        )


#: The stages of a run, in order (the DAG runs the same functions, one task each).
STAGES = ("extract", "tag", "resolve templates", "compute due", "dispatch", "write back", "pull bounces")

T = TypeVar("T")
Measure = Callable[[str, Callable[[], T]], T]


def _untimed(_name: str, fn: Callable[[], T]) -> T:
    return fn()


def run_pipeline(
    settings: Settings,
    as_of: dt.datetime,
    *,
    run_id: str | None = None,
    horizon: dt.datetime | None = None,
    engines: Engines | None = None,
    db: Database | None = None,
    channels: dict[str, Channel] | None = None,
    progress: Callable[[str], None] | None = None,
    measure: Measure | None = None,
) -> RunReport:
    """extract → tag → resolve templates → compute due → dispatch (batches) → write back →
    pull bounces. ``measure(name, fn)`` wraps each stage (the benchmark times them)."""
    engines = engines or Engines.from_settings(settings)
    if db is None:
        ensure_schema(engines.dispatch)
        db = Database(engines.dispatch)
    # else the caller checked the schema: the preview's rollback connection holds SQLite's
    # write lock, and a check on a second connection would wait for it forever.
    own_channels = channels is None  # the run closes what it opens, never the caller's
    channels = build_channels(settings) if channels is None else channels
    ctx = RunContext.new(as_of, run_id=run_id, horizon=horizon)
    report = RunReport(ctx.run_id, ctx.as_of, ctx.horizon)
    say = progress or (lambda msg: log.info(msg))
    stage = measure or _untimed

    def dispatch_batches(n: int) -> list[BatchSummary]:
        batches = []
        for b in range(n):
            batches.append(dispatch_batch(db, engines.accounting, ctx, b, channels, settings))
            say(f"dispatch batch {b + 1}/{n}: {batches[-1].as_dict()['events']}")
        return batches

    start_run(db, ctx)
    try:
        extracted = stage(
            "extract", lambda: extract_invoices(db, engines.accounting, ctx, settings.extract_lookback)
        )
        report.stages["extract"] = extracted.as_dict()
        say(f"extract: {report.stages['extract']}")
        report.stages["tag"] = stage("tag", lambda: tag_new_invoices(db, ctx)).as_dict()
        say(f"tag: {report.stages['tag']}")
        report.stages["resolve_templates"] = stage(
            "resolve templates", lambda: resolve_templates(db, ctx)
        ).as_dict()
        say(f"resolve templates: {report.stages['resolve_templates']}")
        due = stage("compute due", lambda: compute_due_sends(db, ctx, channels, settings))
        report.stages["compute_due"] = due.as_dict()
        say(f"compute due: {report.stages['compute_due']}")
        batches = stage("dispatch", lambda: dispatch_batches(due.batches))
        report.stages["dispatch"] = {"batches": [b.as_dict() for b in batches]}
        report.counts = stage("write back", lambda: write_back(db, ctx))
        report.stages["bounces"] = stage("pull bounces", lambda: pull_bounces_stage(db, settings, ctx))
    except BaseException:
        fail_run(db, ctx.run_id)
        raise
    finally:
        if own_channels:
            close_channels(channels)
    return report


def pull_bounces_stage(db: Database, settings: Settings, ctx: RunContext) -> dict:
    """Bounces reported by the e-mail provider since the last pull become manual actions.

    Runs after write-back: a provider that cannot be reached for its bounce lists must not
    undo a day's sends, so its failure is reported and retried by the next run.
    """
    from dispatch.channels.base import ChannelError
    from dispatch.stages.pull_bounces import pull_bounces

    try:
        return pull_bounces(db, settings, ctx).as_dict()
    except ChannelError as exc:
        log.warning("bounces not pulled (the next run tries again): %s", exc)
        return {"error": str(exc)}
