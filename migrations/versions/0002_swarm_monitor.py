"""swarm monitor: time series, per-peer state, leaderboard, experts and monitor status

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 02:43:01.316641
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import backend.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leaderboard_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("credit_key", sa.String(length=140), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("peer_id", sa.String(length=128), nullable=True),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("rejected_samples", sa.BigInteger(), nullable=False),
        sa.Column("flagged_claims", sa.Integer(), nullable=False),
        sa.Column("time_online_s", sa.Double(), nullable=False),
        sa.Column("recent_score", sa.Double(), nullable=False),
        sa.Column("score_at", sa.Double(), nullable=False),
        sa.Column("updated_at", backend.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_leaderboard_entries_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_leaderboard_entries_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leaderboard_entries")),
        sa.UniqueConstraint("run_id", "credit_key", name="uq_leaderboard_entries_run_id_credit_key"),
    )
    with op.batch_alter_table("leaderboard_entries", schema=None) as batch_op:
        batch_op.create_index("ix_leaderboard_entries_run_id_samples", ["run_id", "samples"], unique=False)
        batch_op.create_index(batch_op.f("ix_leaderboard_entries_user_id"), ["user_id"], unique=False)

    op.create_table(
        "monitor_status",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("last_poll_at", sa.Double(), nullable=True),
        sa.Column("last_success_at", sa.Double(), nullable=True),
        sa.Column("poll_duration_s", sa.Double(), nullable=False),
        sa.Column("polls", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("invalid_records", sa.BigInteger(), nullable=False),
        sa.Column("flagged_claims", sa.BigInteger(), nullable=False),
        sa.Column("peers_online", sa.Integer(), nullable=False),
        sa.Column("samples_per_second", sa.Double(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("samples_accumulated", sa.BigInteger(), nullable=False),
        sa.Column("eta_s", sa.Double(), nullable=True),
        sa.Column("loss", sa.Double(), nullable=True),
        sa.Column("total_samples", sa.BigInteger(), nullable=False),
        sa.Column("retention_at", sa.Double(), nullable=False),
        sa.Column("updated_at", backend.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_monitor_status_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitor_status")),
        sa.UniqueConstraint("run_id", name=op.f("uq_monitor_status_run_id")),
    )
    op.create_table(
        "swarm_experts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=256), nullable=False),
        sa.Column("peer_id", sa.String(length=128), nullable=False),
        sa.Column("replicas", sa.Integer(), nullable=False),
        sa.Column("live", sa.Boolean(), nullable=False),
        sa.Column("last_seen", backend.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_swarm_experts_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_swarm_experts")),
        sa.UniqueConstraint("run_id", "uid", name="uq_swarm_experts_run_id_uid"),
    )
    op.create_table(
        "swarm_peers",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("peer_id", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("declared_username", sa.String(length=64), nullable=True),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("reachability", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("client_mode", sa.Boolean(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("samples_per_second", sa.Double(), nullable=False),
        sa.Column("loss", sa.Double(), nullable=True),
        sa.Column("total_samples", sa.BigInteger(), nullable=False),
        sa.Column("credited_samples", sa.BigInteger(), nullable=False),
        sa.Column("rejected_samples", sa.BigInteger(), nullable=False),
        sa.Column("flagged_claims", sa.Integer(), nullable=False),
        sa.Column("time_online_s", sa.Double(), nullable=False),
        sa.Column("baseline_total", sa.BigInteger(), nullable=False),
        sa.Column("baseline_epoch", sa.Integer(), nullable=False),
        sa.Column("baseline_at", sa.Double(), nullable=False),
        sa.Column("last_expiration", sa.Double(), nullable=False),
        sa.Column("first_seen", backend.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen", backend.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("flag_reason", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_swarm_peers_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_swarm_peers_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_swarm_peers")),
        sa.UniqueConstraint("run_id", "peer_id", name="uq_swarm_peers_run_id_peer_id"),
    )
    with op.batch_alter_table("swarm_peers", schema=None) as batch_op:
        batch_op.create_index(
            "ix_swarm_peers_run_id_online_last_seen", ["run_id", "online", "last_seen"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_swarm_peers_user_id"), ["user_id"], unique=False)

    op.create_table(
        "swarm_points",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("t", sa.Double(), nullable=False),
        sa.Column("resolution_s", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("peers", sa.Double(), nullable=False),
        sa.Column("samples_per_second", sa.Double(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Double(), nullable=True),
        sa.Column("total_samples", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_swarm_points_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_swarm_points")),
    )
    with op.batch_alter_table("swarm_points", schema=None) as batch_op:
        batch_op.create_index(
            "ix_swarm_points_run_id_resolution_s_t", ["run_id", "resolution_s", "t"], unique=False
        )
        batch_op.create_index("ix_swarm_points_run_id_t", ["run_id", "t"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("swarm_points", schema=None) as batch_op:
        batch_op.drop_index("ix_swarm_points_run_id_t")
        batch_op.drop_index("ix_swarm_points_run_id_resolution_s_t")

    op.drop_table("swarm_points")
    with op.batch_alter_table("swarm_peers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_swarm_peers_user_id"))
        batch_op.drop_index("ix_swarm_peers_run_id_online_last_seen")

    op.drop_table("swarm_peers")
    op.drop_table("swarm_experts")
    op.drop_table("monitor_status")
    with op.batch_alter_table("leaderboard_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_leaderboard_entries_user_id"))
        batch_op.drop_index("ix_leaderboard_entries_run_id_samples")

    op.drop_table("leaderboard_entries")
