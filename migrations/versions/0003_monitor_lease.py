"""monitor lease: which swarm monitor polls the database

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:12:44.108215
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "monitor_lease",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("acquired_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_monitor_lease_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitor_lease")),
    )


def downgrade() -> None:
    op.drop_table("monitor_lease")
