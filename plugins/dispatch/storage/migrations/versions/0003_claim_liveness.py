"""claim liveness: wall-clock leases renewed by the claimant, and the hand-over window

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

``claim_leases`` holds one row per claim token: who holds it (host, process) and when it
last said it was alive, on the database's clock. ``invoice_actions.handover_at`` is set,
one statement per window of requests, just before the window goes to the provider: an
action of a dead claim without it was provably never handed over.

Adding a nullable column needs no table rebuild on SQLite, so the views on
``invoice_actions`` stay as they are.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "claim_leases",
        sa.Column("claim_token", sa.String(length=96), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("claim_token", name=op.f("pk_claim_leases")),
    )
    with op.batch_alter_table("invoice_actions", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("handover_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("invoice_actions", schema=None) as batch_op:
        batch_op.drop_column("handover_at")
    op.drop_table("claim_leases")
