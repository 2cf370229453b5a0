"""The monitor lease: only one swarm monitor per database polls, the others stand by and take over when
it stops, dies or loses the lease. On SQLite and PostgreSQL, each test on a fresh migrated database."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from backend.db import make_engine, make_session_factory
from backend.migrate import upgrade
from backend.models import MonitorLease
from backend.monitor import MonitorConfig, MonitorService, RunSpec, RunWatcher, SwarmMonitor
from backend.monitor.lease import Lease, default_ttl
from peer.dht import DHT, DHTConfig
from peer.utils.loop import run_coroutine

INTERVAL = 0.2
MONITOR_LOG = "backend.monitor.monitor"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(empty_db_url) -> Iterator[tuple[str, sessionmaker[Session]]]:
    upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        yield empty_db_url, make_session_factory(engine)
    finally:
        engine.dispose()


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ---- the lease itself ------------------------------------------------------------------------------


def test_a_live_lease_is_kept_and_renewed_and_an_expired_one_is_taken(database):
    _, sessions = database
    clock = Clock()
    first = Lease(sessions, ttl_s=30.0, holder="first", clock=clock)
    second = Lease(sessions, ttl_s=30.0, holder="second", clock=clock)
    assert first.state() is None  # no monitor took it yet

    assert first.try_acquire()  # makes the row
    assert not second.try_acquire() and second.held_until == 0.0
    assert first.state().holder == "first" and first.state().expires_at == 1030.0

    clock.now = 1020.0  # the holder renews: it keeps the lease, and when it took it
    assert first.try_acquire() and first.held_until == 1050.0
    clock.now = 1049.0
    assert not second.try_acquire()
    state = second.state()
    assert (state.holder, state.acquired_at, state.expires_at) == ("first", 1000.0, 1050.0)
    assert state.live(clock.now)

    clock.now = 1051.0  # the holder stopped renewing: the lease has run out
    assert not state.live(clock.now)
    assert second.try_acquire()
    state = first.state()
    assert (state.holder, state.acquired_at, state.expires_at) == ("second", 1051.0, 1081.0)
    assert not first.try_acquire() and first.held_until == 0.0


def test_release_hands_the_lease_over_at_once(database):
    _, sessions = database
    clock = Clock()
    first = Lease(sessions, ttl_s=30.0, holder="first", clock=clock)
    second = Lease(sessions, ttl_s=30.0, holder="second", clock=clock)
    assert first.try_acquire() and not second.try_acquire()

    first.release()
    assert first.state().expires_at == 0.0 and first.held_until == 0.0
    clock.now = 1001.0
    assert second.try_acquire()  # long before the released lease would have expired
    first.release()  # not the holder: a no-op
    assert second.state().holder == "second" and second.state().expires_at == 1031.0

    second.release()
    clock.now = 1002.0
    assert second.try_acquire()  # taken again after a release: a new tenure
    assert second.state().acquired_at == 1002.0


def test_monitors_starting_together_elect_one_holder(database):
    _, sessions = database
    leases = [Lease(sessions, ttl_s=30.0, holder=f"monitor-{i}") for i in range(6)]
    barrier = threading.Barrier(len(leases))
    results: dict[str, bool | BaseException] = {}

    def contend(lease: Lease) -> None:
        barrier.wait(10.0)
        try:
            results[lease.holder] = lease.try_acquire()
        except BaseException as e:  # reported by the assertion below
            results[lease.holder] = e

    threads = [threading.Thread(target=contend, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30.0)
    assert all(isinstance(held, bool) for held in results.values()), results
    winners = [holder for holder, held in results.items() if held is True]
    assert len(winners) == 1 and len(results) == len(leases)
    assert leases[0].state().holder == winners[0]


def test_the_ttl_outlasts_an_interval_a_poll_timeout_and_30_seconds():
    assert default_ttl(10.0, 30.0) == 40.0  # the site's defaults
    assert default_ttl(60.0, 30.0) == 180.0
    assert default_ttl(1.0, 5.0) == 30.0
    assert MonitorConfig(interval_s=10.0, poll_timeout_s=30.0).lease_ttl() == 40.0
    assert MonitorConfig(interval_s=0.2, lease_ttl_s=1.0).lease_ttl() == 1.0
    with pytest.raises(ValueError, match="lease_ttl_s"):
        MonitorConfig(interval_s=10.0, lease_ttl_s=5.0)
    with pytest.raises(ValueError, match="ttl_s"):
        Lease(make_session_factory(make_engine("sqlite://")), ttl_s=0.0)


# ---- monitors that share a database --------------------------------------------------------------


class CountedMonitor:
    """A real `SwarmMonitor` whose polls are counted (and, with `real_polls=False`, do nothing)."""

    def __init__(self, url: str, tmp_path, *, real_polls: bool = True, lease_ttl_s: float | None = None):
        self.engine = make_engine(url)
        config = MonitorConfig(
            interval_s=INTERVAL, identity_dir=tmp_path / "monitor-keys", lease_ttl_s=lease_ttl_s
        )
        self.monitor = SwarmMonitor(config, make_session_factory(self.engine), secret_key="not used")
        self.polls = 0
        self.first_poll_at: float | None = None
        original = self.monitor.apoll_once

        async def counted() -> dict[str, str | None]:
            self.polls += 1
            self.first_poll_at = self.first_poll_at or time.time()
            return await original() if real_polls else {}

        self.monitor.apoll_once = counted  # type: ignore[method-assign]
        self.service = MonitorService(self.monitor)

    def stop(self) -> None:
        self.service.stop()
        self.engine.dispose()


@pytest.fixture
def monitors(database, tmp_path) -> Iterator[Callable[..., CountedMonitor]]:
    url, _ = database
    made: list[CountedMonitor] = []

    def make(**kwargs) -> CountedMonitor:
        made.append(CountedMonitor(url, tmp_path, **kwargs))
        return made[-1]

    try:
        yield make
    finally:
        for counted in made:
            counted.stop()


@pytest.mark.timeout(60)
def test_only_one_of_two_monitors_polls_and_the_other_takes_over_when_it_stops(database, monitors, caplog):
    _, sessions = database
    caplog.set_level(logging.INFO, logger=MONITOR_LOG)
    a, b = monitors(), monitors()
    a.service.start()
    b.service.start()
    assert wait_until(lambda: a.polls + b.polls >= 10, 10.0), "nobody polls"
    holder, standby = (a, b) if a.polls else (b, a)
    assert standby.polls == 0 and standby.monitor.watchers == {}
    assert f"Another monitor ({holder.monitor.lease.holder}) polls this database; standing by" in caplog.text
    assert Lease(sessions, ttl_s=1.0).state().holder == holder.monitor.lease.holder

    stopped_at = time.time()
    holder.service.stop()  # it releases the lease: the standby takes over at its next try
    polls = holder.polls
    assert wait_until(lambda: standby.polls >= 3, 10.0), "the standby never took over"
    assert standby.first_poll_at - stopped_at < 10 * INTERVAL  # a few tries, far from the 30 s TTL
    assert holder.polls == polls
    assert f"This swarm monitor ({standby.monitor.lease.holder}) now polls this database" in caplog.text

    standby.service.stop()
    state = Lease(sessions, ttl_s=1.0).state()
    assert state.holder == standby.monitor.lease.holder and state.expires_at == 0.0  # released


@pytest.mark.timeout(60)
def test_a_dead_monitors_lease_is_taken_once_it_runs_out(database, monitors, caplog):
    _, sessions = database
    caplog.set_level(logging.INFO, logger=MONITOR_LOG)
    dead = Lease(sessions, ttl_s=1.5, holder="a monitor that died")
    assert dead.try_acquire()  # and never renews
    counted = monitors(real_polls=False)
    counted.service.start()
    assert wait_until(lambda: counted.polls > 0, 10.0), "the lease never passed on"
    assert counted.first_poll_at >= dead.held_until  # not a moment before it ran out
    assert counted.first_poll_at - dead.held_until < 10 * INTERVAL
    assert "Another monitor (a monitor that died) polls this database; standing by" in caplog.text


@pytest.mark.timeout(60)
def test_a_monitor_that_loses_the_lease_leaves_its_swarms(database, monitors, caplog, tmp_path):
    _, sessions = database
    caplog.set_level(logging.INFO, logger=MONITOR_LOG)
    bootstrap = DHT(config=DHTConfig(request_timeout=2.0))
    try:
        spec = RunSpec(
            run_id=1,
            slug="lease-run",
            initial_peers=tuple(bootstrap.get_visible_maddrs()),
            target_batch_size=1,
            open=True,
        )
        watcher = RunWatcher(spec, identity_dir=tmp_path / "monitor-keys", token_lifetime_s=3600.0)
        run_coroutine(watcher.astart())
        counted = monitors(real_polls=False)
        counted.monitor.watchers[spec.run_id] = watcher  # as if it had polled the run
        counted.service.start()
        assert wait_until(lambda: counted.polls >= 2, 10.0)
        assert watcher.started

        with sessions() as session:  # another monitor took the lease (e.g. this one stalled past its TTL)
            lease = session.get(MonitorLease, 1)
            lease.holder, lease.expires_at = "a faster monitor", time.time() + 60.0
            session.commit()
        assert wait_until(lambda: not watcher.started, 10.0), "the monitor stayed in the swarm"
        assert counted.monitor.watchers == {}
        polls = counted.polls
        assert "Another monitor (a faster monitor) polls this database; standing by" in caplog.text
        assert not wait_until(lambda: counted.polls > polls, 5 * INTERVAL)  # it stands by
    finally:
        bootstrap.shutdown()


@pytest.mark.timeout(60)
def test_a_database_error_while_renewing_skips_the_poll_and_never_stops_the_monitor(
    database, monitors, caplog
):
    _, sessions = database
    caplog.set_level(logging.INFO, logger=MONITOR_LOG)
    counted = monitors(real_polls=False)
    with sessions() as session:
        session.execute(text("DROP TABLE monitor_lease"))
        session.commit()
    counted.service.start()
    assert wait_until(lambda: "cannot renew its lease" in caplog.text, 10.0)
    assert counted.polls == 0 and counted.service.running

    MonitorLease.__table__.create(sessions.kw["bind"])  # the database is back
    assert wait_until(lambda: counted.polls > 0, 10.0), "the monitor never recovered"
    assert counted.service.running
