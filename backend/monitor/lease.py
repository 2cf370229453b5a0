"""The monitor lease: a row in the database (`monitor_lease`, id 1) that says which swarm monitor polls.

Every monitor tries to take or renew the lease before each poll, and only its holder polls; the others
stand by. Taking and renewing are one conditional UPDATE, so two monitors can never both succeed:

    UPDATE monitor_lease SET holder = :me, expires_at = :now + :ttl, acquired_at = CASE ... END
    WHERE id = 1 AND (holder = :me OR expires_at < :now)

A holder that stops releases the lease (its `expires_at` becomes 0), so a standby takes over at its
next try; one that dies stops renewing, so a standby takes over once the lease expires. The row is
made by the first monitor that finds none (a concurrent insert loses on the primary key and falls back
to the UPDATE).

Times are unix seconds from each monitor's own clock, so the hosts' clocks must agree to well within
the TTL (NTP does).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from backend.db import read_only
from backend.models import MonitorLease

LEASE_ID = 1
MIN_TTL_S = 30.0


def default_ttl(interval_s: float, poll_timeout_s: float) -> float:
    """Three intervals, and at least 30 s. The holder renews before each poll, and a poll may take up to
    `poll_timeout_s` (plus storing) before the next renewal, so the TTL also outlasts a timeout and an
    interval."""
    return max(3 * interval_s, poll_timeout_s + interval_s, MIN_TTL_S)


def holder_id() -> str:
    """A name for this holder that people can read, unique thanks to its random part."""
    return f"{socket.gethostname()} pid {os.getpid()} ({secrets.token_hex(4)})"


@dataclass(frozen=True)
class LeaseState:
    """The lease as stored: who took it last, when, and until when."""

    holder: str
    acquired_at: float
    expires_at: float

    def live(self, now: float) -> bool:
        return self.expires_at >= now


class Lease:
    """One monitor's side of the lease (see the module docstring). Every call is one short transaction;
    a database error propagates to the caller."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        ttl_s: float,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.session_factory = session_factory
        self.ttl_s = ttl_s
        self.holder = holder if holder is not None else holder_id()
        self.clock = clock
        self.held_until = 0.0  # what the last successful try granted (0: not held)

    def try_acquire(self) -> bool:
        """Take the lease if it is free or expired, or renew it if held; True when held now."""
        now = self.clock()
        held = self._try_update(now)
        if held is None:  # no row yet: make it, unless another monitor just did
            held = self._try_insert(now) or bool(self._try_update(now))
        self.held_until = now + self.ttl_s if held else 0.0
        return held

    def release(self) -> None:
        """Hand the lease over at once (a no-op unless this monitor holds it)."""
        self.held_until = 0.0
        with self.session_factory() as session:
            session.execute(
                update(MonitorLease)
                .where(MonitorLease.id == LEASE_ID, MonitorLease.holder == self.holder)
                .values(expires_at=0.0)
                .execution_options(synchronize_session=False)
            )
            session.commit()

    def state(self) -> LeaseState | None:
        """The lease as stored now (None before any monitor took it)."""
        with self.session_factory() as session:
            row = read_only(session).get(MonitorLease, LEASE_ID)
            return None if row is None else LeaseState(row.holder, row.acquired_at, row.expires_at)

    def _try_update(self, now: float) -> bool | None:
        """The conditional UPDATE: True when it took or renewed the lease, False when another monitor
        holds it, None when there is no row yet."""
        renewing = and_(MonitorLease.holder == self.holder, MonitorLease.expires_at >= now)
        statement = (
            update(MonitorLease)
            .where(
                MonitorLease.id == LEASE_ID,
                or_(MonitorLease.holder == self.holder, MonitorLease.expires_at < now),
            )
            .values(
                holder=self.holder,
                expires_at=now + self.ttl_s,
                acquired_at=case((renewing, MonitorLease.acquired_at), else_=now),
            )
        )
        with self.session_factory() as session:
            if session.connection().execute(statement).rowcount == 1:
                session.commit()
                return True
            exists = session.scalar(select(MonitorLease.id).where(MonitorLease.id == LEASE_ID)) is not None
            session.commit()
        return False if exists else None

    def _try_insert(self, now: float) -> bool:
        with self.session_factory() as session:
            session.add(
                MonitorLease(id=LEASE_ID, holder=self.holder, acquired_at=now, expires_at=now + self.ttl_s)
            )
            try:
                session.commit()
            except IntegrityError:  # another monitor made the row first
                session.rollback()
                return False
        return True
