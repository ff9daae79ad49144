"""who did it, which template went out, and the analysts' views

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

* ``action_events.actor``: the person behind an event (``ignored``, ``marked_sent``,
  ``sent_manually``, ``template_refreshed`` …); NULL for what a run did on its own.
* ``action_events.template_id``: the template version an event concerns — the version a
  person's send or a re-queued action goes out with.
* ``organizations.country``: ISO 3166 alpha-2; phone numbers are read with it and it is the
  default holiday calendar (``holidays`` still overrides).
* Views ``daily_sends`` and ``stuck_invoices`` (docs/data-dictionary.md), on both databases.

Adding nullable columns is a plain ``ALTER TABLE … ADD COLUMN`` on SQLite and PostgreSQL,
and no view reads ``action_events``, so nothing has to be copied or recreated. The view
bodies are frozen here; ``dispatch.storage.schema.VIEWS`` holds the same text (a test compares).
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
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
               COUNT(*) AS invoices
        FROM invoices i
        LEFT JOIN invoice_actions a ON a.invoice_id = i.invoice_id
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
}


def view_sql(name: str, dialect: str) -> str:
    return VIEWS[name].format(utc_day=_UTC_DAY.get(dialect, _UTC_DAY["postgresql"]))


def upgrade() -> None:
    op.add_column("action_events", sa.Column("actor", sa.String(length=64), nullable=True))
    op.add_column("organizations", sa.Column("country", sa.String(length=2), nullable=True))
    op.add_column("action_events", sa.Column("template_id", sa.String(length=96), nullable=True))
    dialect = op.get_bind().dialect.name
    for name in VIEWS:
        op.execute(f"CREATE VIEW {name} AS {view_sql(name, dialect)}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table("action_events", schema=None) as batch_op:
        batch_op.drop_column("template_id")
        batch_op.drop_column("actor")
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_column("country")
