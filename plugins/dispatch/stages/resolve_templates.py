"""Stage 3, resolve templates: one invoicing action per ``to_send`` invoice (R5–R8).

The template is the one of the plan assigned to the customer that OWNS the invoice in
the accounting system (R7) — never the parent's: a child without a plan gets no action
(R8) and its invoice stays listed by ``invoices_without_template`` until a plan is
assigned; the next run then creates the action. The action is scheduled at creation
(SPEC "Time") and keeps its template version for good.

The invoices to resolve come from the template queue (``template_queue``, filled by tag):
the day's new to-send invoices and the few still without template, never a search for
missing actions across every to-send invoice of the history.

Set-based: Python reads a page of the queue with only what the schedule needs (dates, the
delay, the org's calendar), computes the instants and the deterministic action ids column
by column, and stages those few columns in a temporary table (COPY on PostgreSQL). Two
``INSERT … SELECT`` statements then create the actions — joined in SQL to the invoice's
plan, template and organization — and their ``created`` events; no action row travels
through Python, and nothing comes back but the ids created (to leave out of the events the
actions a concurrent run created first).
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import (
    Column,
    Connection,
    Date,
    MetaData,
    String,
    Table,
    Text,
    case,
    delete,
    func,
    literal,
    or_,
    select,
)

from dispatch.rules.scheduling import scheduled_instants
from dispatch.runtime.runs import RunContext
from dispatch.storage import bulk_load, source
from dispatch.storage.bulk import append_rows, dialect_insert
from dispatch.storage.schema import (
    UTCDateTime,
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


def action_ids_for(invoice_ids: Iterable[str]) -> np.ndarray:
    """:func:`action_id_for` of many invoices at once (an object array, same order).

    UUID version 5 is the SHA-1 of the namespace and the name with six bits set; only the
    hash is computed per id, the bits and the hex spelling are set for the whole column."""
    prefix, sha1 = ACTION_NAMESPACE.bytes, hashlib.sha1
    digests = b"".join([sha1(prefix + i.encode("utf-8")).digest()[:16] for i in invoice_ids])
    raw = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x50  # version 5
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    hexed = np.frombuffer(raw.tobytes().hex().encode("ascii"), dtype="S32").astype("U32")
    return np.char.add("act_", hexed).astype(object)


@dataclass
class ResolveSummary:
    created: int = 0
    without_template: int = 0

    def as_dict(self) -> dict:
        return self.__dict__.copy()


#: Invoices resolved per chunk: memory stays flat whatever the number of new invoices.
CHUNK_ROWS = 50_000

#: The staged schedule of a page: what Python computed, joined in SQL with the rest.
_STAGE = Table(
    "_resolve_schedule",
    MetaData(),
    Column("action_id", String(64)),
    Column("invoice_id", String(64)),
    Column("scheduled_for", UTCDateTime),
    Column("scheduled_local_date", Date),
    Column("scheduled_text", Text),  # the instant as the created event spells it
    prefixes=["TEMPORARY"],
)


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


def _with_template(source):  # type: ignore[no-untyped-def]
    """``source`` (holding ``invoice_id``) joined to the invoice, the plan of the customer
    that owns it, that plan's template and the invoice's organization."""
    return (
        source.join(invoices, invoices.c.invoice_id == source.c.invoice_id)
        .join(customer_plans, customer_plans.c.customer_id == invoices.c.customer_id)
        .join(plans, (plans.c.plan_id == customer_plans.c.plan_id) & (plans.c.org_id == invoices.c.org_id))
        .join(invoice_templates, invoice_templates.c.template_id == plans.c.template_id)
        .join(organizations, organizations.c.org_id == invoices.c.org_id)
    )


def _in_page(column, first: str, upto: str):  # type: ignore[no-untyped-def]
    """``column`` within the page's keys [``first``, ``upto``]: every statement of a page
    bounds its scans of invoices and actions by the page's key range, so that no plan reads
    every to-send invoice or every action of the history once per page (which made the
    stage quadratic), whatever the planner believes of the tables' sizes — right after the
    bulk import of a first run the invoices have no statistics and look empty to it. Both
    ends count: a day's first page, open below, read the whole history's invoices."""
    return (column >= first) & (column <= upto)


def _candidates(conn: Connection, page, first: str, upto: str) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """The schedule inputs of the invoices of a queue page that are to send, have no action
    yet and whose owner has a plan with a template. The query starts from the page (never
    from every to-send invoice), whatever the planner's statistics say after a bulk import."""
    stmt = (
        select(
            invoices.c.invoice_id,
            invoices.c.issue_date,
            invoices.c.first_seen_at,
            invoice_templates.c.delay_days,
            organizations.c.timezone,
            organizations.c.send_time,
            # the org's holiday calendar: `holidays`, else its country
            func.coalesce(organizations.c.holidays, organizations.c.country).label("holidays"),
        )
        .select_from(_with_template(page))
        .where(invoices.c.sending_status == "to_send", ~_has_action())
        .where(_in_page(invoices.c.invoice_id, first, upto))
    )
    if conn.dialect.name != "postgresql":
        return pd.read_sql(stmt, conn)
    return _copy_out(conn, stmt)


def _copy_out(conn: Connection, stmt) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """The candidates through ``COPY (…) TO STDOUT`` parsed by pandas' C reader: a page's
    50,000 rows cost a tenth of their trip through result rows and per-value type
    processing. Every column comes back as text (no value is taken for a NaN marker; the
    only nullable one, ``holidays``, means "none" when empty, as NULL does); the dates and
    the delay are converted column-wise; ``first_seen_at`` is spelt in UTC by the session."""
    sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    buffer = io.BytesIO()
    dbapi = conn.connection.driver_connection
    with dbapi.cursor() as cur:  # type: ignore[union-attr]
        cur.execute("SET LOCAL TimeZone = 'UTC'")
        with cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv, HEADER true)") as copy:
            for block in copy:
                buffer.write(block)
    buffer.seek(0)
    frame = pd.read_csv(buffer, dtype=str, keep_default_na=False, na_filter=False)
    frame["issue_date"] = pd.to_datetime(frame["issue_date"], format="%Y-%m-%d")
    frame["first_seen_at"] = pd.to_datetime(frame["first_seen_at"], utc=True, format="ISO8601")
    frame["delay_days"] = pd.to_numeric(frame["delay_days"])
    return frame


def _schedule(cand: pd.DataFrame) -> pd.DataFrame:
    """The staged columns: action ids and instants, computed column by column."""
    cand["first_seen_at"] = pd.to_datetime(cand["first_seen_at"], utc=True)
    sched = scheduled_instants(cand)
    scheduled_for = pd.to_datetime(sched["scheduled_for"], utc=True)
    naive = scheduled_for.dt.tz_localize(None).to_numpy(dtype="datetime64[s]")
    text = pd.Series(np.char.add(np.datetime_as_string(naive, unit="s"), "Z"), index=cand.index, dtype=object)
    return pd.DataFrame(
        {
            "action_id": action_ids_for(cand["invoice_id"].astype(str)),
            "invoice_id": cand["invoice_id"].astype(str),
            "scheduled_for": scheduled_for,
            "scheduled_local_date": pd.to_datetime(sched["scheduled_local_date"]).dt.date,
            "scheduled_text": text.where(~np.isnat(naive), None),
        }
    )


_ACTION_COLUMNS = [
    "action_id", "invoice_id", "org_id", "plan_id", "template_id", "channel", "automatic",
    "owner_user_id", "scheduled_for", "scheduled_local_date", "status", "attempts",
    "created_at", "updated_at",
]  # fmt: skip
_EVENT_COLUMNS = ["action_id", "invoice_id", "at", "event", "detail", "run_id"]


def _action_insert(conn: Connection, stage: Table, ctx: RunContext, first: str, upto: str):  # type: ignore[no-untyped-def]
    """The staged actions, completed in SQL from the invoice's plan and template; an invoice
    that has its action already (a concurrent run's) is skipped by the conflict."""
    at = literal(ctx.as_of, UTCDateTime())
    t = invoice_templates
    rows = select(
        stage.c.action_id,
        stage.c.invoice_id,
        invoices.c.org_id,
        plans.c.plan_id,
        t.c.template_id,
        t.c.channel,
        t.c.automatic,
        func.coalesce(t.c.owner_user_id, organizations.c.default_owner),
        stage.c.scheduled_for,
        stage.c.scheduled_local_date,
        literal("scheduled"),
        literal(0),
        at,
        at,
    ).select_from(_with_template(stage))
    # SQLite needs a WHERE before ON CONFLICT (else it reads the ON as the join's)
    rows = rows.where(invoices.c.sending_status == "to_send", _in_page(invoices.c.invoice_id, first, upto))
    return dialect_insert(conn, invoice_actions).from_select(_ACTION_COLUMNS, rows).on_conflict_do_nothing()


def _detail(template_id, channel, automatic, scheduled_text):  # type: ignore[no-untyped-def]
    """The ``created`` event's description of its action."""
    return (
        literal("template ")
        + template_id
        + ", "
        + channel
        + ", "
        + case((automatic, "automatic"), else_="manual")
        + ", scheduled for "
        + scheduled_text
    )


def _insert_actions_and_events(conn: Connection, stage: Table, ctx: RunContext, first: str, upto: str) -> int:
    """PostgreSQL: the actions and their ``created`` events in one statement — the events
    are written from the ``RETURNING`` of the actions' insert, so only the actions this run
    created get one (a concurrent run's are that run's), and the page's join to plan and
    template is made once. Returns the number created.

    The events read nothing but that ``RETURNING``: the instant is spelt from the returned
    ``scheduled_for`` (as Python spells ``scheduled_text``: ``YYYY-MM-DDTHH:MM:SSZ`` in UTC)
    rather than joined back to the stage, because the planner knows nothing of how many rows
    the insert returns and a nested loop over the stage per returned row took minutes."""
    a = invoice_actions
    created = (
        _action_insert(conn, stage, ctx, first, upto)
        .returning(
            a.c.action_id, a.c.invoice_id, a.c.template_id, a.c.channel, a.c.automatic, a.c.scheduled_for
        )
        .cte("created")
    )
    spelt = func.to_char(func.timezone("UTC", created.c.scheduled_for), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
    rows = select(
        created.c.action_id,
        created.c.invoice_id,
        literal(ctx.as_of, UTCDateTime()),
        literal("created"),
        _detail(created.c.template_id, created.c.channel, created.c.automatic, spelt),
        literal(ctx.run_id),
    ).select_from(created)
    events = (
        action_events.insert()
        .from_select(_EVENT_COLUMNS, rows)
        .returning(action_events.c.action_id)
        .cte("events")
    )
    return int(conn.execute(select(func.count()).select_from(events)).scalar() or 0)


def _insert_actions(conn: Connection, stage: Table, ctx: RunContext, first: str, upto: str) -> list[str]:
    """SQLite: the staged actions; returns the ids created."""
    stmt = _action_insert(conn, stage, ctx, first, upto)
    return list(conn.execute(stmt.returning(invoice_actions.c.action_id)).scalars())


def _keep_created(conn: Connection, stage: Table, staged: pd.Series, created: list[str]) -> None:
    """Unstage the actions this run did not create (a concurrent run's, rare): their
    ``created`` event is that run's."""
    skipped = staged[~staged.isin(created)].tolist()
    for start in range(0, len(skipped), source.IN_LIST):
        conn.execute(delete(stage).where(stage.c.action_id.in_(skipped[start : start + source.IN_LIST])))


def _insert_created_events(conn: Connection, stage: Table, ctx: RunContext, first: str, upto: str) -> None:
    """SQLite: one ``created`` event per staged action, described from the same plan and
    template as the action (the statement never reads the history of actions or events)."""
    t = invoice_templates
    rows = (
        select(
            stage.c.action_id,
            stage.c.invoice_id,
            literal(ctx.as_of, UTCDateTime()),
            literal("created"),
            _detail(t.c.template_id, t.c.channel, t.c.automatic, stage.c.scheduled_text),
            literal(ctx.run_id),
        )
        .select_from(_with_template(stage))
        .where(invoices.c.sending_status == "to_send", _in_page(invoices.c.invoice_id, first, upto))
    )
    conn.execute(action_events.insert().from_select(_EVENT_COLUMNS, rows))


def _settle_queue(conn: Connection, first: str, upto: str) -> None:
    """Take off the queue, for keys in [``first``, ``upto``], the invoices that have their
    action now or are no longer to send (marked sent, cancelled); the rest — no template
    yet — stay, for the next run to retry."""
    done = or_(
        ~select(invoices.c.invoice_id)
        .where(invoices.c.invoice_id == template_queue.c.invoice_id, invoices.c.sending_status == "to_send")
        .where(_in_page(invoices.c.invoice_id, first, upto))
        .exists(),
        select(invoice_actions.c.invoice_id)
        .where(invoice_actions.c.invoice_id == template_queue.c.invoice_id)
        .where(_in_page(invoice_actions.c.invoice_id, first, upto))
        .exists(),
    )
    conn.execute(delete(template_queue).where(done, _in_page(template_queue.c.invoice_id, first, upto)))


#: Kept during a bulk load: every page's statements look actions up by invoice (the NOT
#: EXISTS of "no action yet", the queue's settling) and it is the conflict target of a
#: concurrent run's insert; the queue's pages arrive in its key order, so its inserts append.
_KEPT_DURING_BULK = ("uq_invoice_actions_invoice_id",)


def _bulk_tables(conn: Connection, min_rows: int) -> list[str]:
    """The tables whose indexes this run builds after its load (``bulk_load``): on
    PostgreSQL, when at least ``min_rows`` invoices are queued and they outnumber the actions
    (resp. the events) already there — a first run, a mass import. The queue is counted
    without a lock first (a day's run stops there); then the tables are locked and counted
    exactly: a concurrent run that loaded them meanwhile is seen.

    ``invoices`` is locked with them, first, in one statement: dropping the actions' foreign
    key takes ``ACCESS EXCLUSIVE`` on it anyway, and taking it later (after the ANALYZE's
    weaker lock) would be an upgrade that can deadlock with a reader holding the invoices
    and waiting for the actions."""
    if not bulk_load.supported(conn) or bulk_load.count_up_to(conn, template_queue.name, min_rows) < min_rows:
        return []
    tables = [invoice_actions.name, action_events.name]
    bulk_load.lock_tables(conn, [invoices.name, *tables])
    # Right after a first run's bulk import the invoices and the queue have no statistics
    # (they look empty to the planner): each page's joins would then hash every to-send
    # invoice, and sort the whole queue, instead of reading the page's key range. A sample
    # now costs a fraction of a second.
    conn.exec_driver_sql(f"ANALYZE {invoices.name}, {template_queue.name}")
    queued = int(conn.execute(select(func.count()).select_from(template_queue)).scalar() or 0)
    return [t for t in tables if bulk_load.worth_deferring(conn, t, queued, min_rows=min_rows)]


def resolve_templates(
    db: Database, ctx: RunContext, *, chunk_rows: int | None = None, bulk_min_rows: int | None = None
) -> ResolveSummary:
    """Create the missing actions of the queued invoices, one keyset page at a time, in one
    transaction; the cost follows the day's new invoices plus those still without template.

    A first run (at least ``bulk_min_rows`` queued invoices, more than the actions there)
    builds the indexes and the foreign key of the actions and events after the load
    (:mod:`dispatch.storage.bulk_load`: same transaction, the tables locked until commit)."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    summary = ResolveSummary()
    with db.tx() as conn:
        bulk = _bulk_tables(conn, bulk_min_rows or bulk_load.BULK_MIN_ROWS)
        with bulk_load.deferred_indexes(conn, bulk, keep=_KEPT_DURING_BULK):
            _resolve_pages(conn, ctx, chunk_rows, summary)
        summary.without_template = int(
            conn.execute(select(func.count()).select_from(template_queue)).scalar() or 0
        )
    return summary


def _resolve_pages(conn: Connection, ctx: RunContext, chunk_rows: int, summary: ResolveSummary) -> None:
    """The queue, one keyset page at a time: candidates, schedule, actions, events, settle."""
    _STAGE.create(conn)
    after: str | None = None
    while True:
        page = _queue_page(after, chunk_rows)
        first, last, n_page = conn.execute(
            select(func.min(page.c.invoice_id), func.max(page.c.invoice_id), func.count())
        ).one()
        if not n_page:
            break
        cand = _candidates(conn, page, first, last)
        if not cand.empty:
            conn.execute(delete(_STAGE))
            schedule = _schedule(cand)
            append_rows(conn, _STAGE, schedule)
            if conn.dialect.name == "postgresql":
                # a temporary table has no statistics: without them the planner would
                # hash every created event of the history to check a day's few actions
                conn.exec_driver_sql(f"ANALYZE {_STAGE.name}")
            if conn.dialect.name == "postgresql":
                summary.created += _insert_actions_and_events(conn, _STAGE, ctx, first, last)
            else:
                created = _insert_actions(conn, _STAGE, ctx, first, last)
                if len(created) < len(schedule):
                    _keep_created(conn, _STAGE, schedule["action_id"], created)
                _insert_created_events(conn, _STAGE, ctx, first, last)
                summary.created += len(created)
            del schedule
        del cand
        _settle_queue(conn, first, last)
        after = str(last)
        if n_page < chunk_rows:
            break
    _STAGE.drop(conn)
