"""an index on the invoice number, for the Invoices page's search

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

The page finds an invoice by its number whatever its organization; the index
``(org_id, number)`` cannot serve that (its first column is the organization), so at a
million invoices the search read the whole table (~200 ms on PostgreSQL). A plain index,
no table rebuild, on SQLite and PostgreSQL.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_invoices_number"), "invoices", ["number"])


def downgrade() -> None:
    op.drop_index(op.f("ix_invoices_number"), table_name="invoices")
