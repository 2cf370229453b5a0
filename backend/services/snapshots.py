"""What the swarm monitor stored for a run, read once per poll and shared by every reader.

Only the monitor writes a run's swarm tables (peers, leaderboard, time series, experts, status), and
each time it does (`backend.monitor.store.record_reading`, `record_unwatched`) it bumps the run's
`monitor_status.version` in the same transaction. So a reader checks that version (one small query)
and reads the rows only when it changed: `run_snapshot(session, run_id)` returns the run's
`RunSnapshot` for the version the session sees, and `snapshot.part(name, build)` returns one of its
parts (the peers, the leaderboard, the time series...), built on first use by `build()` with the
caller's session while other readers of the same part wait for it instead of building it again.

A reader never gets rows older than the version it read (the version is read first). Snapshots are
kept per database: per the session's bind (the site's Engine; in the tests, the Connection whose
transaction is rolled back after each test), in a weak dictionary, so they go away with it. Each run
keeps only its newest snapshot.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.models import MonitorStatus

T = TypeVar("T")
SnapshotKey = tuple[int, datetime | None]  # (version, updated_at): a run made again never matches


class RunSnapshot:
    """One run's stored swarm state at one version; its parts are built on first use."""

    def __init__(self, key: SnapshotKey):
        self.key = key
        self._lock = threading.RLock()  # a part may be built from another part
        self._parts: dict[Hashable, Any] = {}

    @property
    def version(self) -> int:
        return self.key[0]

    def part(self, name: Hashable, build: Callable[[], T]) -> T:
        """The part `name`, built by `build()` the first time it is asked for."""
        with self._lock:  # one reader builds, the others wait for its result
            if name not in self._parts:
                self._parts[name] = build()
            return self._parts[name]


class SnapshotCache:
    """The newest snapshot of each run of one database."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[int, RunSnapshot] = {}

    def get(self, run_id: int, key: SnapshotKey) -> RunSnapshot:
        with self._lock:
            current = self._runs.get(run_id)
            if current is not None and current.key == key:
                return current
            snapshot = RunSnapshot(key)
            if current is None or key[0] >= current.key[0]:  # a slower reader never brings back an old one
                self._runs[run_id] = snapshot
            return snapshot


_caches: weakref.WeakKeyDictionary[Any, SnapshotCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def snapshot_cache(session: Session) -> SnapshotCache:
    """The snapshots of the database `session` reads from."""
    bind = session.get_bind()
    with _caches_lock:
        cache = _caches.get(bind)
        if cache is None:
            cache = _caches[bind] = SnapshotCache()
        return cache


def run_snapshot(session: Session, run_id: int) -> RunSnapshot:
    """The run's snapshot at the version `session` sees (version 0: the monitor stored nothing yet)."""
    row = session.execute(
        select(MonitorStatus.version, MonitorStatus.updated_at).where(MonitorStatus.run_id == run_id)
    ).first()
    key: SnapshotKey = (int(row.version), row.updated_at) if row is not None else (0, None)
    return snapshot_cache(session).get(run_id, key)
