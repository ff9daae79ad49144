"""daily cost: indexes that let a day's run touch only the day's rows

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

* ``action_events (run_id, event)``: a run's counts read its own events, not the log's history;
* ``invoices (first_seen_run_id)``: the invoices a run imported (tag counts, run counts);
* ``invoices (sending_status, sent_how)``: the run's outcome totals are an index-only
  aggregate, never a scan of the invoice rows into Python;
* ``rejected_invoices (run_id)``: the rows a run rejected;
* the table ``template_queue``: the to-send invoices still waiting for their action (tag
  queues them, resolve templates takes them off), so that resolving templates reads the
  day's new invoices and the few without a template, not every to-send invoice. It starts
  with the invoices that are waiting now.

Plain indexes and a new table: no table is rebuilt and the views stay as they are.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

INDEXES = (
    ("action_events", "ix_action_events_run_id_event", ["run_id", "event"]),
    ("invoices", "ix_invoices_first_seen_run_id", ["first_seen_run_id"]),
    ("invoices", "ix_invoices_sending_status_sent_how", ["sending_status", "sent_how"]),
    ("rejected_invoices", "ix_rejected_invoices_run_id", ["run_id"]),
)


def upgrade() -> None:
    for table, name, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)
    op.create_table(
        "template_queue",
        sa.Column("invoice_id", sa.String(length=64), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("invoice_id", name=op.f("pk_template_queue")),
    )
    op.execute(
        """
        INSERT INTO template_queue (invoice_id, queued_at)
        SELECT i.invoice_id, i.first_seen_at FROM invoices i
        WHERE i.sending_status = 'to_send'
          AND NOT EXISTS (SELECT 1 FROM invoice_actions a WHERE a.invoice_id = i.invoice_id)
        """
    )


def downgrade() -> None:
    op.drop_table("template_queue")
    for table, name, _columns in reversed(INDEXES):
        op.drop_index(name, table_name=table)
