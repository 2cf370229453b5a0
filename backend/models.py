"""The site's tables: users and their sessions and API keys, runs with their authority keys,
datasets, the log of issued access tokens, and what the swarm monitor stores (per-run time series,
per-peer last state, leaderboard rows, expert liveness, the monitor's own status and its lease).
Alembic migrations (in `migrations/`) create them."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from backend.db import Base, UTCDateTime, utcnow


class Role(str, enum.Enum):
    volunteer = "volunteer"
    organizer = "organizer"
    admin = "admin"


class RunStatus(str, enum.Enum):
    active = "active"
    paused = "paused"
    archived = "archived"


class AuthMode(str, enum.Enum):
    open = "open"  # anyone may join; peers need no token
    volunteers = "volunteers"  # any signed-in volunteer gets a token
    allowlist = "allowlist"  # only the listed usernames get a token


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.volunteer.value)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="user", cascade="all, delete-orphan")

    @property
    def can_organize(self) -> bool:
        return self.role in (Role.organizer.value, Role.admin.value)


class UserSession(Base):
    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship()


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to recognise a key
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the whole key
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    user: Mapped[User] = relationship(back_populates="api_keys")


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.active.value)
    recipe_name: Mapped[str] = mapped_column(String(200))
    recipe_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    target_batch_size: Mapped[int] = mapped_column(Integer)
    optimizer: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    averaging: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    compression: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    auth_mode: Mapped[str] = mapped_column(String(16), default=AuthMode.volunteers.value)
    allowlist: Mapped[list[str]] = mapped_column(JSON, default=list)
    initial_peers: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    owner: Mapped[User] = relationship()
    authority_key: Mapped[RunAuthorityKey | None] = relationship(
        back_populates="run", cascade="all, delete-orphan", uselist=False
    )
    dataset: Mapped[RunDataset | None] = relationship(
        back_populates="run", cascade="all, delete-orphan", uselist=False
    )


class RunAuthorityKey(Base):
    """A run's Ed25519 token authority; the private key is encrypted with the site's secret key."""

    __tablename__ = "run_authority_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    encrypted_private_key: Mapped[bytes] = mapped_column(LargeBinary(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    run: Mapped[Run] = relationship(back_populates="authority_key")


class RunDataset(Base):
    """Where a run's data lives: an uploaded file (stored by the site) or an external URL."""

    __tablename__ = "run_datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # "upload" or "url"
    url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    filename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    storage_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    format: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    run: Mapped[Run] = relationship(back_populates="dataset")


class TokenIssuance(Base):
    """One access token handed out: who, which run, which peer, and until when."""

    __tablename__ = "token_issuances"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    peer_id: Mapped[str] = mapped_column(String(128))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


# ---- the swarm monitor (backend.monitor writes these; backend.services.swarm reads them) ----------

# 64-bit ids that autoincrement on SQLite too (SQLite only autoincrements INTEGER PRIMARY KEY)
BigId = BigInteger().with_variant(Integer(), "sqlite")


class SwarmPoint(Base):
    """One point of a run's time series. Raw points (`resolution_s` 0) are one monitor poll each;
    retention merges old ones into 1-minute, 1-hour and 1-day means (`weight` raw points each)."""

    __tablename__ = "swarm_points"
    __table_args__ = (
        Index("ix_swarm_points_run_id_t", "run_id", "t"),
        Index("ix_swarm_points_run_id_resolution_s_t", "run_id", "resolution_s", "t"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    t: Mapped[float] = mapped_column(Double)  # unix seconds
    resolution_s: Mapped[int] = mapped_column(Integer, default=0)
    weight: Mapped[int] = mapped_column(Integer, default=1)  # raw points merged into this one
    peers: Mapped[float] = mapped_column(Double)  # peers online (a mean once merged)
    samples_per_second: Mapped[float] = mapped_column(Double)
    epoch: Mapped[int] = mapped_column(Integer)  # the highest in the bucket
    loss: Mapped[float | None] = mapped_column(Double, nullable=True)
    total_samples: Mapped[int] = mapped_column(BigInteger)  # credited so far (cumulative: the last one)


class SwarmPeer(Base):
    """A peer's last known state in a run, and the baseline its credited samples are counted from."""

    __tablename__ = "swarm_peers"
    __table_args__ = (
        UniqueConstraint("run_id", "peer_id", name="uq_swarm_peers_run_id_peer_id"),
        Index("ix_swarm_peers_run_id_online_last_seen", "run_id", "online", "last_seen"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    peer_id: Mapped[str] = mapped_column(String(128))
    # credited user: the one the site issued this peer's first access token to (None: not known)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True
    )
    declared_username: Mapped[str | None] = mapped_column(String(64), nullable=True)  # never trusted
    device: Mapped[str] = mapped_column(String(64), default="")
    reachability: Mapped[str] = mapped_column(String(16), default="")
    version: Mapped[str] = mapped_column(String(64), default="")
    client_mode: Mapped[bool] = mapped_column(Boolean, default=False)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    samples_per_second: Mapped[float] = mapped_column(Double, default=0.0)
    loss: Mapped[float | None] = mapped_column(Double, nullable=True)
    total_samples: Mapped[int] = mapped_column(BigInteger, default=0)  # as claimed in its last record
    credited_samples: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected_samples: Mapped[int] = mapped_column(BigInteger, default=0)  # claims that failed the checks
    flagged_claims: Mapped[int] = mapped_column(Integer, default=0)
    time_online_s: Mapped[float] = mapped_column(Double, default=0.0)
    baseline_total: Mapped[int] = mapped_column(BigInteger, default=0)  # credit counts up from here
    baseline_epoch: Mapped[int] = mapped_column(Integer, default=0)  # the swarm's epoch at the baseline
    baseline_at: Mapped[float] = mapped_column(Double, default=0.0)
    last_expiration: Mapped[float] = mapped_column(Double, default=0.0)  # newest record expiration seen
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    online: Mapped[bool] = mapped_column(Boolean, default=True)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    flag_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)

    user: Mapped[User | None] = relationship()


class LeaderboardEntry(Base):
    """What one contributor gave a run: a user (through their peers' tokens) or, in open runs, a peer."""

    __tablename__ = "leaderboard_entries"
    __table_args__ = (
        UniqueConstraint("run_id", "credit_key", name="uq_leaderboard_entries_run_id_credit_key"),
        Index("ix_leaderboard_entries_run_id_samples", "run_id", "samples"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    credit_key: Mapped[str] = mapped_column(String(140))  # "user:<id>" or "peer:<PeerID>"
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True
    )
    peer_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    samples: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected_samples: Mapped[int] = mapped_column(BigInteger, default=0)
    flagged_claims: Mapped[int] = mapped_column(Integer, default=0)
    time_online_s: Mapped[float] = mapped_column(Double, default=0.0)
    recent_score: Mapped[float] = mapped_column(Double, default=0.0)  # decayed to `score_at`
    score_at: Mapped[float] = mapped_column(Double, default=0.0)  # unix seconds
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    user: Mapped[User | None] = relationship()


class SwarmExpert(Base):
    """An expert of a Mixture-of-Experts run that the monitor has seen declared, and by whom."""

    __tablename__ = "swarm_experts"
    __table_args__ = (UniqueConstraint("run_id", "uid", name="uq_swarm_experts_run_id_uid"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    uid: Mapped[str] = mapped_column(String(256))
    peer_id: Mapped[str] = mapped_column(String(128))  # the most recently refreshed server
    replicas: Mapped[int] = mapped_column(Integer, default=1)  # servers declaring it at the last poll
    live: Mapped[bool] = mapped_column(Boolean, default=True)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MonitorStatus(Base):
    """The monitor's view of a run right now: the live summary, and how the monitoring itself goes.

    `version` grows by one with every stored poll, so readers (the live WebSocket) notice changes
    with one cheap query."""

    __tablename__ = "monitor_status"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), unique=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    last_poll_at: Mapped[float | None] = mapped_column(Double, nullable=True)  # unix seconds
    last_success_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    poll_duration_s: Mapped[float] = mapped_column(Double, default=0.0)
    polls: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    invalid_records: Mapped[int] = mapped_column(BigInteger, default=0)
    flagged_claims: Mapped[int] = mapped_column(BigInteger, default=0)
    peers_online: Mapped[int] = mapped_column(Integer, default=0)
    samples_per_second: Mapped[float] = mapped_column(Double, default=0.0)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    samples_accumulated: Mapped[int] = mapped_column(BigInteger, default=0)  # towards this epoch
    eta_s: Mapped[float | None] = mapped_column(Double, nullable=True)
    loss: Mapped[float | None] = mapped_column(Double, nullable=True)
    total_samples: Mapped[int] = mapped_column(BigInteger, default=0)  # credited, all contributors
    retention_at: Mapped[float] = mapped_column(Double, default=0.0)  # last downsampling
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class MonitorLease(Base):
    """Which swarm monitor polls this database: one row (id 1), held until `expires_at` and renewed
    by its holder before each poll (see `backend.monitor.lease`)."""

    __tablename__ = "monitor_lease"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    holder: Mapped[str] = mapped_column(Text)  # "<host> pid <pid> (<random id>)", for people to read
    acquired_at: Mapped[float] = mapped_column(Double)  # unix seconds: when this holder took it
    expires_at: Mapped[float] = mapped_column(Double)  # unix seconds; 0 once released
