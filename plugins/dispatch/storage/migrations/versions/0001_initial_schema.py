"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


# Views are part of the contract (CONTRACT §4). `invoice_status` reckons "today" in the
# organization's time zone on PostgreSQL; SQLite has no time-zone database, so it uses the
# UTC date there.
_TODAY = {
    "postgresql": "(now() AT TIME ZONE COALESCE(o.timezone, 'UTC'))::date",
    "sqlite": "date('now')",
}

VIEWS = {
    "invoice_status": """
        SELECT i.invoice_id, i.org_id, i.customer_id,
               CASE
                 WHEN i.accounting_status = 'void' THEN 'void'
                 WHEN i.sending_status = 'to_send' THEN 'to_send'
                 WHEN i.accounting_status = 'paid' THEN 'paid'
                 WHEN i.due_date IS NOT NULL AND i.due_date < {today} THEN 'overdue'
                 ELSE 'not_due'
               END AS status
        FROM invoices i LEFT JOIN organizations o ON o.org_id = i.org_id
    """,
    "todo_invoicing": """
        SELECT a.action_id, a.invoice_id, i.number AS invoice_number, a.org_id, i.customer_id,
               c.name AS customer_name, a.channel, a.owner_user_id, a.manual_reason,
               a.created_at, a.detail, a.recipient, a.updated_at AS manual_since
        FROM invoice_actions a
        JOIN invoices i ON i.invoice_id = a.invoice_id
        LEFT JOIN customers c ON c.customer_id = i.customer_id
        WHERE a.status = 'manual'
    """,
    "invoices_without_template": """
        SELECT i.invoice_id, i.org_id, i.customer_id, i.number, i.first_seen_at
        FROM invoices i
        WHERE i.sending_status = 'to_send'
          AND NOT EXISTS (SELECT 1 FROM invoice_actions a WHERE a.invoice_id = i.invoice_id)
    """,
}
# R3: what analytics, dunning and the customer portal read never includes `to_send`
# (nor invoices not yet tagged by the run importing them).
for _name in ("analytics_invoices", "dunning_invoices", "portal_invoices"):
    VIEWS[_name] = """
        SELECT * FROM invoices
        WHERE sending_status IS NOT NULL AND sending_status <> 'to_send'
    """


def create_views() -> None:
    dialect = op.get_bind().dialect.name
    today = _TODAY.get(dialect, "CURRENT_DATE")
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body.format(today=today)}")


def drop_views() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")


def upgrade() -> None:

    op.create_table(
        "action_events",
        sa.Column(
            "event_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("action_id", sa.String(length=64), nullable=False),
        sa.Column("invoice_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_action_events")),
    )
    with op.batch_alter_table("action_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_action_events_action_id"), ["action_id"], unique=False)

    op.create_table(
        "customers",
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("parent_customer_id", sa.String(length=64), nullable=True),
        sa.Column("language", sa.String(length=8), server_default="en", nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customers")),
    )
    op.create_table(
        "dispatch_runs",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("horizon", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="running", nullable=False),
        sa.Column("counts", sa.JSON(), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed')", name=op.f("ck_dispatch_runs_status")
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_dispatch_runs")),
    )
    op.create_table(
        "due_sends",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("action_id", sa.String(length=64), nullable=False),
        sa.Column("batch_no", sa.Integer(), nullable=False),
        sa.Column("deliver_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "action_id", name=op.f("pk_due_sends")),
    )
    with op.batch_alter_table("due_sends", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_due_sends_run_id_batch_no"), ["run_id", "batch_no"], unique=False
        )

    op.create_table(
        "invoices",
        sa.Column("invoice_id", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("number", sa.Text(), nullable=False),
        sa.Column("issue_date", sa.Date(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("total_amount", sa.Numeric(precision=14, scale=2), nullable=False),
        sa.Column("accounting_status", sa.String(length=8), nullable=False),
        sa.Column("pdf_path", sa.Text(), nullable=True),
        sa.Column("source_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_seen_run_id", sa.String(length=64), nullable=True),
        sa.Column("sending_status", sa.String(length=16), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_how", sa.String(length=16), nullable=True),
        sa.CheckConstraint(
            "accounting_status IN ('open', 'paid', 'void')", name=op.f("ck_invoices_accounting_status")
        ),
        sa.CheckConstraint(
            "sending_status IS NULL OR sending_status IN ('to_send', 'sent', 'not_required', 'cancelled')",
            name=op.f("ck_invoices_sending_status"),
        ),
        sa.CheckConstraint(
            "sent_how IS NULL OR sent_how IN ('automatic', 'manual', 'ignored', 'marked_sent')",
            name=op.f("ck_invoices_sent_how"),
        ),
        sa.PrimaryKeyConstraint("invoice_id", name=op.f("pk_invoices")),
    )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_invoices_customer_id"), ["customer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_invoices_org_id_number"), ["org_id", "number"], unique=False)
        batch_op.create_index(batch_op.f("ix_invoices_sending_status"), ["sending_status"], unique=False)

    op.create_table(
        "organizations",
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("send_time", sa.String(length=5), nullable=False),
        sa.Column("holidays", sa.String(length=8), nullable=True),
        sa.Column("invoice_sending_enabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("default_owner", sa.String(length=64), nullable=True),
        sa.Column("mail_from", sa.Text(), nullable=True),
        sa.Column("reply_to", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_organizations")),
    )
    op.create_table(
        "rejected_invoices",
        sa.Column(
            "rejection_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("invoice_id", sa.Text(), nullable=True),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("row", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("row_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("rejection_id", name=op.f("pk_rejected_invoices")),
        sa.UniqueConstraint("row_hash", "reason", name=op.f("uq_rejected_invoices_row_hash_reason")),
    )
    op.create_table(
        "watermarks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_watermarks")),
    )
    op.create_table(
        "invoice_actions",
        sa.Column("action_id", sa.String(length=64), nullable=False),
        sa.Column("invoice_id", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("template_id", sa.String(length=96), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("automatic", sa.Boolean(), nullable=False),
        sa.Column("owner_user_id", sa.String(length=64), nullable=True),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True),
        sa.Column("scheduled_local_date", sa.Date(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("manual_reason", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("recipient", sa.Text(), nullable=True),
        sa.Column("deliver_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("provider", sa.String(length=16), nullable=True),
        sa.Column("provider_message_id", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("claim_token", sa.String(length=96), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by_run", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("channel IN ('email', 'letter', 'sms')", name=op.f("ck_invoice_actions_channel")),
        sa.CheckConstraint(
            "manual_reason IS NULL OR manual_reason IN ('manual_template', 'no_contact', 'invalid_contact', 'template_error', 'provider_rejected', 'provider_error', 'delivery_unknown', 'bounced', 'missing_pdf')",
            name=op.f("ck_invoice_actions_manual_reason"),
        ),
        sa.CheckConstraint(
            "status <> 'manual' OR manual_reason IS NOT NULL",
            name=op.f("ck_invoice_actions_manual_has_reason"),
        ),
        sa.CheckConstraint(
            "status IN ('scheduled', 'sending', 'sent', 'manual', 'ignored', 'cancelled')",
            name=op.f("ck_invoice_actions_status"),
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.invoice_id"], name=op.f("fk_invoice_actions_invoice_id_invoices")
        ),
        sa.PrimaryKeyConstraint("action_id", name=op.f("pk_invoice_actions")),
        sa.UniqueConstraint("invoice_id", name=op.f("uq_invoice_actions_invoice_id")),
    )
    with op.batch_alter_table("invoice_actions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_invoice_actions_org_id_status"), ["org_id", "status"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_invoice_actions_status_scheduled_for"), ["status", "scheduled_for"], unique=False
        )

    op.create_table(
        "plans",
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("template_id", sa.String(length=96), nullable=True),
        sa.CheckConstraint("level = 'customer' OR template_id IS NULL", name=op.f("ck_plans_template_level")),
        sa.CheckConstraint("level IN ('customer', 'invoice')", name=op.f("ck_plans_level")),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.org_id"], name=op.f("fk_plans_org_id_organizations")
        ),
        sa.PrimaryKeyConstraint("plan_id", name=op.f("pk_plans")),
    )
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.org_id"], name=op.f("fk_users_org_id_organizations")
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_users")),
    )
    op.create_table(
        "customer_plans",
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.plan_id"], name=op.f("fk_customer_plans_plan_id_plans")),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_plans")),
    )
    op.create_table(
        "invoice_templates",
        sa.Column("template_id", sa.String(length=96), nullable=False),
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("delay_days", sa.Integer(), nullable=False),
        sa.Column("automatic", sa.Boolean(), nullable=False),
        sa.Column("owner_user_id", sa.String(length=64), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("template_file", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "channel IN ('email', 'letter', 'sms')", name=op.f("ck_invoice_templates_channel")
        ),
        sa.CheckConstraint("delay_days >= 0", name=op.f("ck_invoice_templates_delay_days")),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.plan_id"], name=op.f("fk_invoice_templates_plan_id_plans")
        ),
        sa.PrimaryKeyConstraint("template_id", name=op.f("pk_invoice_templates")),
    )

    create_views()


def downgrade() -> None:
    drop_views()

    op.drop_table("invoice_templates")
    op.drop_table("customer_plans")
    op.drop_table("users")
    op.drop_table("plans")
    with op.batch_alter_table("invoice_actions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoice_actions_status_scheduled_for"))
        batch_op.drop_index(batch_op.f("ix_invoice_actions_org_id_status"))

    op.drop_table("invoice_actions")
    op.drop_table("watermarks")
    op.drop_table("rejected_invoices")
    op.drop_table("organizations")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoices_sending_status"))
        batch_op.drop_index(batch_op.f("ix_invoices_org_id_number"))
        batch_op.drop_index(batch_op.f("ix_invoices_customer_id"))

    op.drop_table("invoices")
    with op.batch_alter_table("due_sends", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_due_sends_run_id_batch_no"))

    op.drop_table("due_sends")
    op.drop_table("dispatch_runs")
    op.drop_table("customers")
    with op.batch_alter_table("action_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_action_events_action_id"))

    op.drop_table("action_events")
