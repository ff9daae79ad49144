"""The bodies of the ``invoice_dispatch`` DAG's tasks, as plain functions.

The DAG file only wires these together; each one opens the dispatch database, runs one
stage of :mod:`dispatch.runtime.pipeline` for one run (its :class:`~dispatch.runtime.runs.RunContext`) and
returns a small JSON-able dict (ids and counts — the data itself stays in the dispatch
database, staged by run id). Nothing here touches Airflow's metadata database, so every
function runs, and is tested, without an Airflow deployment.

Why these shapes:

* **As-of instant.** A run acts as of its logical date, so a backfill of a past day computes
  what was due then; a manual run without a logical date (possible in Airflow 3) acts as of
  its ``run_after``. The horizon — the time the run covers — ends at the schedule's next
  fire time after the as-of instant, so a deployment that changes the cron changes it too.
* **Safe to retry alone.** ``start_run`` is idempotent and marks the run ``running`` again,
  ``compute_due_sends`` restages its batches by run id, and ``dispatch_batch`` first settles
  the claims an earlier try of the same batch left behind (SPEC B1).
* **A failed batch fails the run, not its siblings.** The run is marked failed only by
  ``write_back``/``report``, which run after *every* batch has finished: marking it failed
  earlier would let a sibling batch settle claims that a live batch still holds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow.sdk import RetryDecision, RetryPolicy

from dispatch.channels.base import FatalChannelError, TransientError
from dispatch.errors import DispatchError
from dispatch.rules.batching import DEFAULT_MAX_BATCHES
from dispatch.rules.horizon import DEFAULT_CRON, DEFAULT_TIMEZONE, Schedule, configured_schedule, run_horizon
from dispatch.vocabulary import EventName, RunStatus

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from dispatch.channels.base import Channel
    from dispatch.config.settings import Settings
    from dispatch.runtime.runs import RunContext
    from dispatch.storage.session import Database

# The DAG file imports this module on every parse: the library (pandas, SQLAlchemy, Jinja…)
# is imported inside the task bodies, where the work happens, not here.

log = logging.getLogger(__name__)

DAG_ID = "invoice_dispatch"
#: the pool every provider call goes through (created by include/airflow/setup.sh)
POOL = "dispatch_providers"
#: the result tables analysts read; the write-back task declares them as Asset outlets
RESULT_TABLES = ("invoices", "invoice_actions", "action_events", "rejected_invoices", "dispatch_runs")


def result_asset_uri(table: str) -> str:
    """The URI analysts' DAGs schedule on, e.g. ``dispatch://dispatch_db/invoices``."""
    return f"dispatch://dispatch_db/{table}"


# --- DAG configuration, read at parse time from the environment only ---------------------------


@dataclass(frozen=True)
class DagConfig:
    """What the DAG file needs at parse time. Environment only: reading an Airflow Variable
    at import would query the metadata database on every parse of the file."""

    cron: str = DEFAULT_CRON
    timezone: str = DEFAULT_TIMEZONE
    owner: str = "invoicing"
    retries: int = 3
    retry_delay: dt.timedelta = dt.timedelta(minutes=2)
    max_retry_delay: dt.timedelta = dt.timedelta(minutes=30)


def dag_config(environ: Mapping[str, str] | None = None) -> DagConfig:
    """``DISPATCH_SCHEDULE_CRON``, ``DISPATCH_SCHEDULE_TZ``, ``DISPATCH_DAG_OWNER``,
    ``DISPATCH_TASK_RETRIES``, ``DISPATCH_RETRY_DELAY_SECONDS``,
    ``DISPATCH_MAX_RETRY_DELAY_SECONDS``; a bad value fails the parse with its name."""
    env = os.environ if environ is None else environ
    base = DagConfig()
    cron, tz = configured_schedule(env)

    def number(name: str, default: float) -> float:
        raw = env.get(name)
        if raw in (None, ""):
            return default
        try:
            value = float(raw)
        except ValueError:
            raise DispatchError(f"{name}={raw!r}: expected a number") from None
        if value < 0:
            raise DispatchError(f"{name}={raw!r}: expected a number >= 0")
        return value

    return DagConfig(
        cron=cron,
        timezone=tz,
        owner=env.get("DISPATCH_DAG_OWNER") or base.owner,
        retries=int(number("DISPATCH_TASK_RETRIES", base.retries)),
        retry_delay=dt.timedelta(seconds=number("DISPATCH_RETRY_DELAY_SECONDS", 120)),
        max_retry_delay=dt.timedelta(seconds=number("DISPATCH_MAX_RETRY_DELAY_SECONDS", 1800)),
    )


# --- the run a task belongs to ----------------------------------------------------------------


def _utc(value: dt.datetime) -> dt.datetime:
    """Aware UTC; a naive value is taken as UTC (as dispatch.runtime.runs.as_utc does)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _plain_utc(value: dt.datetime) -> dt.datetime:
    """A stdlib aware-UTC datetime (Airflow hands out pendulum DateTimes)."""
    v = _utc(value)
    return dt.datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, tzinfo=dt.UTC)


def as_of_from_context(context: Mapping[str, Any]) -> dt.datetime:
    """The run's logical date; for a run without one (manual trigger in Airflow 3 with no
    logical date), the instant it was allowed to run after."""
    logical = context.get("logical_date")
    if logical is None:
        logical = context["dag_run"].run_after
    return _plain_utc(logical)


#: dispatch_runs.run_id and the run columns of the result tables hold 64 characters;
#: Airflow allows run ids of up to 250 (a custom id given to a manual trigger).
MAX_RUN_ID = 64


def dispatch_run_id(airflow_run_id: str) -> str:
    """The DAG run's id, or — when longer than the dispatch tables hold — its start and a
    digest of the whole: deterministic, so every task and every retry of the run agree."""
    if len(airflow_run_id) <= MAX_RUN_ID:
        return airflow_run_id
    digest = hashlib.sha256(airflow_run_id.encode()).hexdigest()[:12]
    return f"{airflow_run_id[: MAX_RUN_ID - len(digest) - 1]}~{digest}"


def run_from_context(context: Mapping[str, Any], config: DagConfig) -> RunContext:
    """The dispatch run of an Airflow task: the DAG run's id, its as-of instant and horizon."""
    from dispatch.runtime.runs import RunContext

    as_of = as_of_from_context(context)
    return RunContext(
        run_id=dispatch_run_id(str(context["run_id"])),
        as_of=as_of,
        horizon=run_horizon(as_of, Schedule(config.cron, config.timezone)),
    )


def retries_left(ti: Any) -> int:
    """How many more tries Airflow will give this task instance after the current one."""
    return max(int(ti.max_tries) - int(ti.try_number) + 1, 0)


# --- settings and connections ------------------------------------------------------------------


def airflow_connection_lookup(conn_id: str) -> Mapping[str, object] | None:
    """An Airflow Connection as the mapping :func:`dispatch.config.settings.load_settings` reads, or
    None when it is not defined. Goes through the Task SDK (secrets backends, then the API
    server), never the metadata database; Airflow masks the secrets it returns in logs."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    return {
        "conn_type": conn.conn_type,
        "host": conn.host,
        "port": conn.port,
        "login": conn.login,
        "password": conn.password,
        "schema": conn.schema,
        "extra": conn.extra_dejson,
    }


def task_settings() -> Settings:
    """Environment variables first (CONTRACT §1), then Airflow Connections, then defaults."""
    from dispatch.config.settings import load_settings

    return load_settings(airflow_lookup=airflow_connection_lookup)


@dataclass
class Runtime:
    """What one task needs, opened for the duration of the task."""

    settings: Settings
    db: Database
    accounting: Engine
    channels: dict[str, Channel]


@contextmanager
def open_runtime(settings: Settings | None = None, *, channels: bool = False) -> Iterator[Runtime]:
    """Engines (and channel backends if asked) for one task; disposed of and closed at the end
    so a long-lived worker keeps no idle connections or threads per finished task."""
    from dispatch.channels.factory import build_channels, close_channels
    from dispatch.runtime.pipeline import Engines
    from dispatch.storage.session import Database

    settings = settings or task_settings()
    engines = Engines.from_settings(settings)
    built: dict[str, Channel] = {}
    try:
        built = build_channels(settings) if channels else {}
        yield Runtime(settings, Database(engines.dispatch), engines.accounting, built)
    finally:
        close_channels(built)  # the HTTP clients, SMTP sessions and sender threads it opened
        engines.dispatch.dispose()
        engines.accounting.dispose()


def _jsonable(value: Any) -> Any:
    """Summaries hold numpy integers and Counters: make them plain JSON for XCom."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


# --- the task bodies ---------------------------------------------------------------------------


def extract_invoices_task(ctx: RunContext, settings: Settings | None = None) -> dict:
    """First task: refuse an uninitialized schema, record the run, import what changed."""
    from dispatch.runtime.pipeline import ensure_schema
    from dispatch.runtime.runs import start_run
    from dispatch.stages.extract_invoices import extract_invoices

    with open_runtime(settings) as rt:
        ensure_schema(rt.db.engine)
        start_run(rt.db, ctx)
        summary = extract_invoices(rt.db, rt.accounting, ctx, rt.settings.extract_lookback)
    out = {"run_id": ctx.run_id, "as_of": ctx.as_of.isoformat(), **summary.as_dict()}
    log.info("extract %s as of %s: %s", ctx.run_id, ctx.as_of.isoformat(), out)
    return _jsonable(out)


def tag_new_invoices_task(ctx: RunContext, settings: Settings | None = None) -> dict:
    from dispatch.stages.tag_new_invoices import tag_new_invoices

    with open_runtime(settings) as rt:
        return _jsonable(tag_new_invoices(rt.db, ctx).as_dict())


def resolve_templates_task(ctx: RunContext, settings: Settings | None = None) -> dict:
    from dispatch.stages.resolve_templates import resolve_templates

    with open_runtime(settings) as rt:
        return _jsonable(resolve_templates(rt.db, ctx).as_dict())


def compute_due_sends_task(
    ctx: RunContext, max_batches: int = DEFAULT_MAX_BATCHES, settings: Settings | None = None
) -> dict:
    """Stage the due actions in batches; ``batch_numbers`` is what the dispatch task maps
    over, never longer than ``max_batches`` (Airflow's ``core.max_map_length``)."""
    from dispatch.stages.compute_due_sends import compute_due_sends

    with open_runtime(settings, channels=True) as rt:
        due = compute_due_sends(rt.db, ctx, rt.channels, rt.settings, max_batches=max_batches)
    out = due.as_dict()
    out["batch_numbers"] = list(range(due.batches))
    log.info("%s: %d due in %d batch(es) of up to %d", ctx.run_id, due.due, due.batches, due.batch_size)
    return _jsonable(out)


class ProviderBackoff(Exception):
    """Some messages of a batch met a transient provider error (rate limit, 5xx): fail this
    try so Airflow retries the batch after a back-off; the retry claims only those actions,
    which went back to ``scheduled``. ``retry_after`` in seconds when known."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def dispatch_batch_task(
    ctx: RunContext, batch_no: int, *, retries_left: int = 0, settings: Settings | None = None
) -> dict:
    """Send one staged batch. ``retries_left`` > 0 turns transient provider failures into a
    retry of this task (:class:`ProviderBackoff`); on the last try they stay ``scheduled``
    for the next run, as in the CLI."""
    from dispatch.runtime.runs import start_run
    from dispatch.stages.dispatch_batch import dispatch_batch

    with open_runtime(settings, channels=True) as rt:
        # A cleared-and-rerun task of a run recorded as failed must not let its siblings
        # treat its fresh claims as a dead run's: the run is live again.
        start_run(rt.db, ctx)
        summary = dispatch_batch(rt.db, rt.accounting, ctx, batch_no, rt.channels, rt.settings)
    out = _jsonable(summary.as_dict())
    log.info("%s batch %d: claimed %d, %s", ctx.run_id, batch_no, summary.claimed, out["events"])
    later = int(summary.events.get(EventName.RETRY_LATER, 0))
    if later and retries_left > 0:
        raise ProviderBackoff(f"batch {batch_no}: {later} message(s) met a transient provider error")
    return out


def write_back_task(
    ctx: RunContext,
    expected_batches: int | None,
    finished_batches: int,
    settings: Settings | None = None,
) -> dict:
    """Sync invoices, count outcomes and close the run — as ``failed`` when a batch (or a
    stage before them: ``expected_batches`` is then None) did not finish, so that the
    claims a dead batch left are settled by the next run without waiting for the lease."""
    from dispatch.runtime.pipeline import ensure_schema
    from dispatch.stages.write_back import write_back

    failed_batches = None if expected_batches is None else max(int(expected_batches) - finished_batches, 0)
    failed = failed_batches is None or failed_batches > 0
    with open_runtime(settings) as rt:
        ensure_schema(rt.db.engine)  # a run that never started (no schema) fails fast, unretried
        counts = write_back(rt.db, ctx, status=RunStatus.FAILED if failed else RunStatus.SUCCEEDED)
    return _jsonable(
        {
            "run_id": ctx.run_id,
            "failed": failed,
            "failed_batches": failed_batches,
            "synced": counts["synced"],
            "run": counts["run"],
            "totals": counts["totals"],
        }
    )


def pull_bounces_task(ctx: RunContext, settings: Settings | None = None) -> dict:
    """Bounces, blocks and invalid addresses SendGrid reported since the last pull become
    manual ``bounced`` actions (skipped unless the e-mail backend is sendgrid)."""
    from dispatch.stages.pull_bounces import pull_bounces

    with open_runtime(settings) as rt:
        return _jsonable(pull_bounces(rt.db, rt.settings, ctx).as_dict())


def report_task(ctx: RunContext, written: Mapping[str, Any] | None, settings: Settings | None = None) -> dict:
    """The run's outcome in one line for the log; marks the run failed when write-back did
    not even run to the end (``written`` is None). The DAG fails its run when ``failed``."""
    if written is None:
        from dispatch.runtime.pipeline import ensure_schema
        from dispatch.runtime.runs import fail_run

        with open_runtime(settings) as rt:
            ensure_schema(rt.db.engine)
            fail_run(rt.db, ctx.run_id)
        return {
            "run_id": ctx.run_id,
            "failed": True,
            "message": "write_back did not finish; run marked failed",
        }
    run = written.get("run", {})

    def events(name: EventName) -> Any:
        return run.get(f"events.{name}", 0)

    line = (
        f"as of {ctx.as_of:%Y-%m-%d %H:%MZ}: imported {run.get('imported', 0)}, "
        f"rejected {run.get('rejected', 0)}, actions {events(EventName.CREATED)}, "
        f"sent {events(EventName.SENT)}, to do {events(EventName.MANUAL)}, "
        f"cancelled {events(EventName.CANCELLED)}"
    )
    if written.get("failed"):
        batches = written.get("failed_batches")
        what = f"{batches} batch(es) failed" if batches else "a stage failed"
        message = f"{what}; run {ctx.run_id} recorded as failed ({line})"
    else:
        message = f"run {ctx.run_id} succeeded ({line})"
    log.info(message)
    return {"run_id": ctx.run_id, "failed": bool(written.get("failed")), "message": message, **run}


# --- retry policy ------------------------------------------------------------------------------


class DispatchRetryPolicy(RetryPolicy):
    """Retry by the kind of failure, not blindly:

    * a provider's authentication/configuration error or a refused setting/schema
      (:class:`FatalChannelError`, :class:`DispatchError`) fails at once — a retry minutes
      later meets the same bad key; the claims were given back untouched;
    * rate limits and transient provider errors back off exponentially, honouring
      ``Retry-After``;
    * anything else (database unreachable, worker lost) backs off exponentially too.

    The back-off is the project's one definition
    (:func:`dispatch.channels.retry.exponential_backoff`), from ``base`` up to ``cap``; the
    task's ``retries`` still bounds how many tries there are.
    """

    def __init__(self, base: dt.timedelta, cap: dt.timedelta) -> None:
        self.base = base
        self.cap = cap

    def evaluate(
        self, exception: BaseException, try_number: int, max_tries: int, context: Any = None
    ) -> RetryDecision:
        if isinstance(exception, FatalChannelError | DispatchError):
            return RetryDecision.fail(f"not retryable: {type(exception).__name__}")
        provider = isinstance(exception, ProviderBackoff | TransientError)
        delay = self.delay(try_number, getattr(exception, "retry_after", None) if provider else None)
        what = "provider back-off" if provider else "back-off"
        return RetryDecision.retry(delay, f"{what} {delay.total_seconds():.0f}s")

    def delay(self, try_number: int, retry_after: float | None = None) -> dt.timedelta:
        """How long before the try after ``try_number``."""
        from dispatch.channels.retry import exponential_backoff

        base, cap = self.base.total_seconds(), self.cap.total_seconds()
        return dt.timedelta(seconds=exponential_backoff(try_number, base, cap, retry_after))

    def serialize(self) -> dict[str, Any]:
        return {
            "__type": type(self).__name__,
            "base": self.base.total_seconds(),
            "cap": self.cap.total_seconds(),
        }

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> DispatchRetryPolicy:
        return cls(dt.timedelta(seconds=data["base"]), dt.timedelta(seconds=data["cap"]))


def max_map_length() -> int:
    """Airflow's configured ``core.max_map_length``: the most mapped batches a run may have."""
    from airflow.sdk import conf

    return conf.getint("core", "max_map_length", fallback=DEFAULT_MAX_BATCHES)
