"""fewer invoice indexes: drop ``invoices (sending_status)``

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

Every invoice a run imports is written into each index of ``invoices``. The index on
``sending_status`` alone is the prefix of ``invoices (sending_status, sent_how)`` (0004),
which serves every query on the status as well, so it only cost writes. Dropping an index
rebuilds nothing, on SQLite or PostgreSQL.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_invoices_sending_status", table_name="invoices")


def downgrade() -> None:
    op.create_index("ix_invoices_sending_status", "invoices", ["sending_status"], unique=False)
