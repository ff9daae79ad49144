"""manual reasons pdf_outside_root and invalid_pdf

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

An invoice PDF is read only from DISPATCH_PDF_ROOT (dispatch.sending.invoice_pdf): a pdf_path
leading elsewhere makes the action manual ``pdf_outside_root``, a file there that is not a
PDF of an acceptable size ``invalid_pdf``. The CHECK constraint on
``invoice_actions.manual_reason`` learns both values.

SQLite cannot alter a constraint, so batch mode copies the table; the views reading
``invoice_actions`` are dropped first and recreated after, as they were in 0001.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BEFORE = (
    "manual_template",
    "no_contact",
    "invalid_contact",
    "template_error",
    "provider_rejected",
    "provider_error",
    "delivery_unknown",
    "bounced",
    "missing_pdf",
)
_AFTER = (*_BEFORE, "pdf_outside_root", "invalid_pdf")

# The views of 0001 that read invoice_actions, unchanged.
_VIEWS = {
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


def _check(reasons: tuple[str, ...]) -> str:
    listed = ", ".join(f"'{r}'" for r in reasons)
    return f"manual_reason IS NULL OR manual_reason IN ({listed})"


def _replace_check(reasons: tuple[str, ...]) -> None:
    for name in _VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table("invoice_actions", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_invoice_actions_manual_reason"), type_="check")
        batch_op.create_check_constraint(
            batch_op.f("ck_invoice_actions_manual_reason"), sa.text(_check(reasons))
        )
    for name, body in _VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def upgrade() -> None:
    _replace_check(_AFTER)


def downgrade() -> None:
    op.execute(
        "UPDATE invoice_actions SET manual_reason = 'missing_pdf' WHERE manual_reason IN ('pdf_outside_root', 'invalid_pdf')"
    )
    _replace_check(_BEFORE)
