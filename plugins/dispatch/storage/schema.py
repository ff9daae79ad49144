"""The dispatch database: configuration, result tables (CONTRACT §4) and run staging.

SQLAlchemy Core tables, so stages can do set-based inserts/updates and pandas can read them.
The migrations in ``dispatch/storage/migrations`` create exactly these tables; a test checks that
the migrated schema and this metadata agree on both SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from dispatch.vocabulary import (
    AccountingStatus,
    ActionStatus,
    ChannelName,
    DeliveryProvider,
    DeliveryState,
    ManualReason,
    PlanLevel,
    RunStatus,
    SendingStatus,
    SentHow,
    StuckReason,
    values,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

# The values each CHECK constraint allows, taken from the enums of dispatch.vocabulary (one
# definition; the migrations keep the same text frozen, and a test compares the two schemas).
SENDING_STATUSES = values(SendingStatus)
SENT_HOW = values(SentHow)
ACTION_STATUSES = values(ActionStatus)
MANUAL_REASONS = values(ManualReason)
CHANNELS = values(ChannelName)
ACCOUNTING_STATUSES = values(AccountingStatus)
PLAN_LEVELS = values(PlanLevel)
RUN_STATUSES = values(RunStatus)
DELIVERY_PROVIDERS = values(DeliveryProvider)
DELIVERY_STATES = values(DeliveryState)


def _in(column: str, values: tuple[str, ...], nullable: bool = False) -> str:
    """A CHECK expression constraining ``column`` to ``values`` (status values live in the
    schema, not only in Python, so analysts' tools and other writers cannot drift)."""
    listed = ", ".join(f"'{v}'" for v in values)
    expr = f"{column} IN ({listed})"
    return f"{column} IS NULL OR {expr}" if nullable else expr


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Instants are stored in UTC and always come back timezone-aware (UTC).

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are stored as
    naive UTC text and re-tagged on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: instants must be timezone-aware")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | str | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


# --- configuration -------------------------------------------------------------------

organizations = Table(
    "organizations",
    metadata,
    Column("org_id", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("send_time", String(5), nullable=False),  # 'HH:MM', local
    Column("holidays", String(8)),  # holiday calendar country, optional; default: country
    Column("country", String(2)),  # ISO 3166 alpha-2: phone numbers, default holidays
    Column("invoice_sending_enabled_at", UTCDateTime),  # NULL: sending off
    Column("default_owner", String(64)),
    Column("mail_from", Text),
    Column("reply_to", Text),
    Column("updated_at", UTCDateTime, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("org_id", String(64), ForeignKey("organizations.org_id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("email", Text),
)

plans = Table(
    "plans",
    metadata,
    Column("plan_id", String(64), primary_key=True),
    Column("org_id", String(64), ForeignKey("organizations.org_id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("level", String(16), nullable=False),
    # the plan's current invoice-sending template (NULL: none); see invoice_templates
    Column("template_id", String(96)),
    CheckConstraint(_in("level", PLAN_LEVELS), name="level"),
    CheckConstraint(f"level = '{PlanLevel.CUSTOMER}' OR template_id IS NULL", name="template_level"),
)

# Templates are immutable versions: editing a plan's template in the config creates a new
# row, so an action keeps exactly the template it was created with (SPEC "Time").
invoice_templates = Table(
    "invoice_templates",
    metadata,
    Column("template_id", String(96), primary_key=True),
    Column("plan_id", String(64), ForeignKey("plans.plan_id"), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("delay_days", Integer, nullable=False),
    Column("automatic", Boolean, nullable=False),
    Column("owner_user_id", String(64)),
    Column("subject", Text),
    Column("body", Text),
    Column("template_file", Text),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint(_in("channel", CHANNELS), name="channel"),
    CheckConstraint("delay_days >= 0", name="delay_days"),
)

customer_plans = Table(
    "customer_plans",
    metadata,
    Column("customer_id", String(64), primary_key=True),
    Column("plan_id", String(64), ForeignKey("plans.plan_id"), nullable=False),
    Column("assigned_at", UTCDateTime, nullable=False),
)

# --- snapshot of the accounting customers (for views and templates) -----------------

customers = Table(
    "customers",
    metadata,
    Column("customer_id", String(64), primary_key=True),
    Column("org_id", String(64), nullable=False),
    Column("name", Text, nullable=False),
    Column("parent_customer_id", String(64)),
    Column("language", String(8), nullable=False, server_default="en"),
)

# --- result tables (CONTRACT §4) ------------------------------------------------------

invoices = Table(
    "invoices",
    metadata,
    Column("invoice_id", String(64), primary_key=True),
    Column("org_id", String(64), nullable=False),
    Column("customer_id", String(64), nullable=False),
    Column("number", Text, nullable=False),
    Column("issue_date", Date, nullable=False),
    Column("due_date", Date),
    Column("currency", String(3), nullable=False),
    Column("total_amount", Numeric(14, 2), nullable=False),
    Column("accounting_status", String(8), nullable=False),
    Column("pdf_path", Text),
    Column("source_updated_at", UTCDateTime),
    Column("first_seen_at", UTCDateTime, nullable=False),
    Column("first_seen_run_id", String(64)),
    Column("sending_status", String(16)),  # NULL only between extract and tag
    Column("sent_at", UTCDateTime),
    Column("sent_how", String(16)),
    CheckConstraint(_in("sending_status", SENDING_STATUSES, nullable=True), name="sending_status"),
    CheckConstraint(_in("sent_how", SENT_HOW, nullable=True), name="sent_how"),
    CheckConstraint(_in("accounting_status", ACCOUNTING_STATUSES), name="accounting_status"),
    # the duplicate-number check (both columns) and the Invoices page's search by number (0010)
    Index(None, "number", "org_id"),
    Index(None, "customer_id"),
    Index(None, "first_seen_run_id"),  # what a run imported (0003)
    # outcome totals, index-only (0004); also every lookup by status (0007 dropped the status alone)
    Index(None, "sending_status", "sent_how"),
)

invoice_actions = Table(
    "invoice_actions",
    metadata,
    Column("action_id", String(64), primary_key=True),
    Column("invoice_id", String(64), ForeignKey("invoices.invoice_id"), nullable=False, unique=True),
    Column("org_id", String(64), nullable=False),
    Column("plan_id", String(64), nullable=False),
    Column("template_id", String(96), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("automatic", Boolean, nullable=False),
    Column("owner_user_id", String(64)),
    Column("scheduled_for", UTCDateTime),
    Column("scheduled_local_date", Date),
    Column("status", String(16), nullable=False),
    Column("manual_reason", String(32)),
    Column("detail", Text),  # human-readable cause of the manual reason
    Column("recipient", Text),
    Column("deliver_at", UTCDateTime),
    Column("provider", String(16)),
    Column("provider_message_id", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("claim_token", String(96)),
    Column("claimed_at", UTCDateTime),
    Column("claimed_by_run", String(64)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # set (database clock) just before the action's window of requests goes to the provider:
    # a dead claim's action without it was provably never handed over (SPEC "Time")
    Column("handover_at", UTCDateTime),
    CheckConstraint(_in("status", ACTION_STATUSES), name="status"),
    CheckConstraint(_in("manual_reason", MANUAL_REASONS, nullable=True), name="manual_reason"),
    CheckConstraint(_in("channel", CHANNELS), name="channel"),
    CheckConstraint(
        f"status <> '{ActionStatus.MANUAL}' OR manual_reason IS NOT NULL", name="manual_has_reason"
    ),
    Index(None, "status", "scheduled_for"),
    Index(None, "org_id", "status"),
    # delivery events find their action by it (0008); only the sent actions have one, and
    # every reader looks it up by equality, so the created actions' NULLs stay out (0009)
    Index(
        None,
        "provider_message_id",
        postgresql_where=text("provider_message_id IS NOT NULL"),
        sqlite_where=text("provider_message_id IS NOT NULL"),
    ),
)

action_events = Table(
    "action_events",
    metadata,
    Column("event_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("action_id", String(64), nullable=False),
    Column("invoice_id", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("event", String(32), nullable=False),
    Column("detail", Text),
    Column("run_id", String(64)),
    Column("actor", String(64)),  # the person behind the event; NULL: a run did it on its own
    Column("template_id", String(96)),  # the template version the event sent or re-queued with
    Index(None, "action_id"),
    Index(None, "run_id", "event"),  # a run's counts read its own events (0003)
)

# One row per provider delivery event (0008): SendGrid's Event Webhook, Twilio's status
# callbacks, the print API's letter tracking events. ``action_id`` stays NULL until the event
# is matched to the action whose send recorded ``provider_message_id`` (an event may arrive
# before the send's write, or be about a message this database never sent).
delivery_events = Table(
    "delivery_events",
    metadata,
    Column("delivery_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("provider", String(16), nullable=False),
    Column("provider_event_id", String(255), nullable=False),
    Column("provider_message_id", String(255)),
    Column("action_id", String(64)),
    Column("event", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("recipient", Text),
    Column("reason", Text),
    Column("occurred_at", UTCDateTime),  # the provider's time of the event (NULL: it gives none)
    Column("received_at", UTCDateTime, nullable=False),
    Column("payload", JSON, nullable=False),
    CheckConstraint(_in("provider", DELIVERY_PROVIDERS), name="provider"),
    CheckConstraint(_in("state", DELIVERY_STATES), name="state"),
    UniqueConstraint("provider", "provider_event_id"),
    Index(None, "provider", "provider_message_id"),
    Index(None, "action_id", "received_at"),
)

rejected_invoices = Table(
    "rejected_invoices",
    metadata,
    Column(
        "rejection_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("invoice_id", Text),
    Column("run_id", String(64), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("row", Text, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("row_hash", String(64), nullable=False),
    UniqueConstraint("row_hash", "reason"),
    Index(None, "run_id"),  # 0003
)

dispatch_runs = Table(
    "dispatch_runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("as_of", UTCDateTime, nullable=False),
    Column("horizon", UTCDateTime),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("status", String(16), nullable=False, server_default=RunStatus.RUNNING.value),
    Column("counts", JSON),
    CheckConstraint(_in("status", RUN_STATUSES), name="status"),
)

# --- bookkeeping ----------------------------------------------------------------------

watermarks = Table(
    "watermarks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", UTCDateTime, nullable=False),
)

# One row per claim token: who holds it and when it last said it was alive, on the
# database's clock (SPEC "Time": liveness is a fact about processes, not the as-of clock).
claim_leases = Table(
    "claim_leases",
    metadata,
    Column("claim_token", String(96), primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("holder", String(255), nullable=False),  # host|boot id|pid namespace|pid
    Column("claimed_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
)

# To-send invoices still waiting for their action: tag queues them, resolve templates takes
# them off once their action exists. What stays is the short list of invoices without a
# template (a child without a plan), retried each run; a run never looks for missing actions
# across all to-send invoices.
template_queue = Table(
    "template_queue",
    metadata,
    Column("invoice_id", String(64), primary_key=True),
    Column("queued_at", UTCDateTime, nullable=False),
)

# Due sends of a run, in batches: compute_due writes them, each dispatch batch reads its own.
due_sends = Table(
    "due_sends",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("action_id", String(64), primary_key=True),
    Column("batch_no", Integer, nullable=False),
    Column("deliver_at", UTCDateTime, nullable=False),
    Index(None, "run_id", "batch_no"),
)


# --- analysts' views (migrations 0005 and 0008; docs/data-dictionary.md) ----------------------
# The migration that last defined a view keeps its own frozen copy of its body; a test checks
# both agree. The views of 0001 (invoice_status, todo_invoicing, …) are defined there alone.
# ``delivery_status`` shows the latest state of the action's current message per recipient:
# the furthest state reached (DELIVERY_STATES order), whatever the order events arrived in.

_UTC_DAY = {
    "postgresql": "CAST((i.sent_at AT TIME ZONE 'UTC') AS DATE)",
    "sqlite": "date(i.sent_at)",
}

VIEWS = {
    "daily_sends": """
        SELECT {utc_day} AS day, i.org_id, a.channel, i.sent_how AS how,
               COUNT(*) AS invoices,
               COALESCE(SUM(d.delivered), 0) AS delivered,
               COALESCE(SUM(d.opened), 0) AS opened,
               COALESCE(SUM(d.bounced), 0) AS bounced
        FROM invoices i
        LEFT JOIN invoice_actions a ON a.invoice_id = i.invoice_id
        LEFT JOIN (
          SELECT action_id,
                 MAX(CASE WHEN state IN ('delivered', 'opened', 'clicked', 'unsubscribed', 'complained')
                     THEN 1 ELSE 0 END) AS delivered,
                 MAX(CASE WHEN state IN ('opened', 'clicked') THEN 1 ELSE 0 END) AS opened,
                 MAX(CASE WHEN state = 'bounced' THEN 1 ELSE 0 END) AS bounced
          FROM delivery_events
          WHERE action_id IS NOT NULL
          GROUP BY action_id
        ) d ON d.action_id = a.action_id
        WHERE i.sending_status = 'sent' AND i.sent_at IS NOT NULL
        GROUP BY {utc_day}, i.org_id, a.channel, i.sent_how
    """,
    "stuck_invoices": """
        SELECT i.invoice_id, i.org_id, i.customer_id, i.number, i.first_seen_at,
               a.action_id, a.channel, a.owner_user_id, a.status AS action_status,
               CASE
                 WHEN a.action_id IS NULL AND cp.customer_id IS NULL THEN 'no_plan'
                 WHEN a.action_id IS NULL THEN 'no_template'
                 WHEN a.status = 'manual' THEN a.manual_reason
                 ELSE 'dead_run'
               END AS reason,
               CASE
                 WHEN a.action_id IS NULL AND cp.customer_id IS NULL
                   THEN 'no plan assigned to the customer that owns the invoice'
                 WHEN a.action_id IS NULL
                   THEN 'plan ' || cp.plan_id || ' has no invoice-sending template'
                 WHEN a.status = 'manual'
                   THEN 'manual (' || a.manual_reason || ')' || COALESCE(': ' || a.detail, '')
                 ELSE 'sending since ' || COALESCE(CAST(a.claimed_at AS TEXT), '?') || ' by run '
                      || COALESCE(a.claimed_by_run, '?') || ', which is no longer running'
               END AS reason_text,
               COALESCE(a.updated_at, i.first_seen_at) AS since
        FROM invoices i
        LEFT JOIN invoice_actions a ON a.invoice_id = i.invoice_id
        LEFT JOIN customer_plans cp ON cp.customer_id = i.customer_id
        LEFT JOIN dispatch_runs r ON r.run_id = a.claimed_by_run
        WHERE i.sending_status = 'to_send'
          AND (a.action_id IS NULL
               OR a.status = 'manual'
               OR (a.status = 'sending' AND (r.run_id IS NULL OR r.status <> 'running')))
    """,
    "delivery_status": """
        SELECT action_id, invoice_id, channel, provider, recipient, state, event, reason, at, events
        FROM (
          SELECT d.action_id, a.invoice_id, a.channel, d.provider,
                 COALESCE(d.recipient, a.recipient) AS recipient, d.state, d.event, d.reason,
                 COALESCE(d.occurred_at, d.received_at) AS at,
                 COUNT(*) OVER (PARTITION BY d.action_id, d.recipient) AS events,
                 ROW_NUMBER() OVER (
                   PARTITION BY d.action_id, d.recipient
                   ORDER BY {state_rank} DESC, COALESCE(d.occurred_at, d.received_at) DESC,
                            d.delivery_id DESC
                 ) AS latest
          FROM delivery_events d
          JOIN invoice_actions a
            ON a.action_id = d.action_id AND a.provider_message_id = d.provider_message_id
          WHERE d.state <> 'other'
        ) ranked
        WHERE latest = 1
    """,
}

# stuck_invoices.reason values beside the manual reasons
STUCK_REASONS = (*values(StuckReason), *MANUAL_REASONS)


_STATE_RANK = (
    "CASE d.state "
    + " ".join(f"WHEN '{state}' THEN {rank}" for rank, state in enumerate(DELIVERY_STATES))
    + " END"
)


def view_sql(name: str, dialect: str) -> str:
    """The body of view ``name`` for a database dialect (``sqlite`` or ``postgresql``)."""
    return VIEWS[name].format(utc_day=_UTC_DAY.get(dialect, _UTC_DAY["postgresql"]), state_rank=_STATE_RANK)
