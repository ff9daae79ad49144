"""delivery events: what the providers' signed webhooks said after "sent"

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

* Table ``delivery_events``: one row per provider event (SendGrid Event Webhook, Twilio status
  callbacks, the print API's letter tracking events), unique on (``provider``,
  ``provider_event_id``) so a re-delivered event is one row; ``action_id`` is NULL until the
  event is matched to the action whose send recorded its ``provider_message_id``.
* Index ``invoice_actions (provider_message_id)``: matching a batch of events reads the
  actions of their message ids, not the whole table.
* View ``delivery_status`` (the latest state of each action's message per recipient), and
  ``daily_sends`` redefined with ``delivered``, ``opened`` and ``bounced`` counts, on both
  databases (docs/data-dictionary.md).

The view bodies are frozen here; ``dispatch.storage.schema.VIEWS`` holds the same text (a
test compares). ``daily_sends`` is dropped and created again: SQLite cannot alter a view, and
PostgreSQL's ``CREATE OR REPLACE`` cannot add columns before existing ones.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The UTC calendar day of an instant, as a date, the same on both databases.
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
    "delivery_status": """
        SELECT action_id, invoice_id, channel, provider, recipient, state, event, reason, at, events
        FROM (
          SELECT d.action_id, a.invoice_id, a.channel, d.provider,
                 COALESCE(d.recipient, a.recipient) AS recipient, d.state, d.event, d.reason,
                 COALESCE(d.occurred_at, d.received_at) AS at,
                 COUNT(*) OVER (PARTITION BY d.action_id, d.recipient) AS events,
                 ROW_NUMBER() OVER (
                   PARTITION BY d.action_id, d.recipient
                   ORDER BY CASE d.state WHEN 'other' THEN 0 WHEN 'accepted' THEN 1 WHEN 'deferred' THEN 2 WHEN 'in_transit' THEN 3 WHEN 'delivered' THEN 4 WHEN 'opened' THEN 5 WHEN 'clicked' THEN 6 WHEN 'unsubscribed' THEN 7 WHEN 'complained' THEN 8 WHEN 'bounced' THEN 9 END DESC, COALESCE(d.occurred_at, d.received_at) DESC,
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

# daily_sends as 0005 defined it, for the downgrade
_DAILY_SENDS_0005 = """
        SELECT {utc_day} AS day, i.org_id, a.channel, i.sent_how AS how,
               COUNT(*) AS invoices
        FROM invoices i
        LEFT JOIN invoice_actions a ON a.invoice_id = i.invoice_id
        WHERE i.sending_status = 'sent' AND i.sent_at IS NOT NULL
        GROUP BY {utc_day}, i.org_id, a.channel, i.sent_how
    """

STATES = (
    "other", "accepted", "deferred", "in_transit", "delivered", "opened", "clicked", "unsubscribed",
    "complained", "bounced",
)  # fmt: skip


def view_sql(name: str, dialect: str) -> str:
    return VIEWS[name].format(utc_day=_UTC_DAY.get(dialect, _UTC_DAY["postgresql"]))


def upgrade() -> None:
    listed = ", ".join(f"'{s}'" for s in STATES)
    op.create_table(
        "delivery_events",
        sa.Column(
            "delivery_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("provider_event_id", sa.String(length=255), nullable=False),
        sa.Column("provider_message_id", sa.String(length=255), nullable=True),
        sa.Column("action_id", sa.String(length=64), nullable=True),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "provider IN ('sendgrid', 'twilio', 'printapi')", name=op.f("ck_delivery_events_provider")
        ),
        sa.CheckConstraint(f"state IN ({listed})", name=op.f("ck_delivery_events_state")),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_delivery_events")),
        sa.UniqueConstraint(
            "provider", "provider_event_id", name=op.f("uq_delivery_events_provider_provider_event_id")
        ),
    )
    op.create_index(
        "ix_delivery_events_provider_provider_message_id",
        "delivery_events",
        ["provider", "provider_message_id"],
        unique=False,
    )
    op.create_index(
        "ix_delivery_events_action_id_received_at",
        "delivery_events",
        ["action_id", "received_at"],
        unique=False,
    )
    op.create_index(
        "ix_invoice_actions_provider_message_id", "invoice_actions", ["provider_message_id"], unique=False
    )
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW IF EXISTS daily_sends")
    for name in VIEWS:
        op.execute(f"CREATE VIEW {name} AS {view_sql(name, dialect)}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    utc_day = _UTC_DAY.get(dialect, _UTC_DAY["postgresql"])
    op.execute(f"CREATE VIEW daily_sends AS {_DAILY_SENDS_0005.format(utc_day=utc_day)}")
    op.drop_index("ix_invoice_actions_provider_message_id", table_name="invoice_actions")
    op.drop_table("delivery_events")
