"""the actions' message-id index holds only the actions that have a message id

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

``invoice_actions (provider_message_id)`` (0008) is how a delivery event finds its action.
Every action is created without a message id (the send sets it), so the full index took one
NULL entry per created action — a write on every insert of resolve templates that no reader
ever uses: every reader looks the column up by equality (the webhooks' ``IN`` lists and
joins, the invoice page's delivery steps, the ``delivery_status`` view), which implies ``IS
NOT NULL``, so both databases use the partial index for them. Rebuilt on upgrade (it holds
the sent actions only).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_NAME = "ix_invoice_actions_provider_message_id"
_SENT = sa.text("provider_message_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index(_NAME, table_name="invoice_actions")
    op.create_index(
        _NAME,
        "invoice_actions",
        ["provider_message_id"],
        unique=False,
        postgresql_where=_SENT,
        sqlite_where=_SENT,
    )


def downgrade() -> None:
    op.drop_index(_NAME, table_name="invoice_actions")
    op.create_index(_NAME, "invoice_actions", ["provider_message_id"], unique=False)
