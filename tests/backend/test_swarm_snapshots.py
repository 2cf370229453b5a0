"""What the monitor stored is read once per poll and shared (`backend.services.snapshots`), and the
live sockets of a run share one feed (`backend.api.live`): readers still see every new poll at once,
and the recent score still decays to the moment it is read. On SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

import backend.api.live
from backend.app import create_app
from backend.db import make_engine, make_session_factory
from backend.migrate import upgrade
from backend.models import Run
from backend.monitor.accounting import ClaimRules
from backend.monitor.records import PeerSighting, SwarmReading
from backend.monitor.store import RunAccounting, StoreOptions, record_reading
from backend.schemas import LiveUpdate, RunCreate
from backend.services import swarm as swarm_service
from backend.services.leaderboard import LeaderboardOrder, leaderboard
from backend.services.runs import create_run
from backend.services.snapshots import RunSnapshot, SnapshotCache, run_snapshot
from backend.services.users import create_user
from backend.settings import Settings
from peer.net.identity import Identity
from peer.optim.progress import PeerRecord, ProgressRecord

T0 = time.time() - 600
HOUR = 3600.0


def _sighting(peer_id: str, total: int, at: float) -> PeerSighting:
    progress = ProgressRecord(
        epoch=1,
        samples_accumulated=0,
        samples_per_second=10.0,
        loss=2.0,
        mini_steps=1,
        total_samples=total,
        time=at,
    )
    return PeerSighting(peer_id, progress=progress, info=PeerRecord(version="0.1.0"), expiration=at + 60)


def _store(session, run: Run, at: float, *peers: tuple[str, int]) -> None:
    accounting = RunAccounting(run_id=run.id, rules=ClaimRules(target_batch_size=4096), credit_peers=True)
    reading = SwarmReading(time=at, peers={peer: _sighting(peer, total, at) for peer, total in peers})
    record_reading(session, run=accounting, reading=reading, options=StoreOptions(half_life_s=HOUR))
    session.commit()


def _peer_ids(count: int) -> list[str]:
    return [Identity.generate().peer_id.to_base58() for _ in range(count)]


@pytest.fixture
def open_run(client, organizer, db) -> Run:
    body = {
        "slug": "open-run",
        "name": "Open",
        "recipe": {"name": "albert", "config": {}},
        "target_batch_size": 4096,
        "auth_mode": "open",
    }
    assert client.post("/api/v1/runs", json=body, headers=organizer.headers).status_code == 201
    return db.scalar(select(Run).where(Run.slug == "open-run"))


def test_reads_are_shared_until_the_next_poll_shows_up(client, db, open_run):
    first, second = _peer_ids(2)
    _store(db, open_run, T0, (first, 100), (second, 100))
    _store(db, open_run, T0 + 10, (first, 300), (second, 200))
    peers, total = swarm_service.list_peers(db, run=open_run)
    again, _ = swarm_service.list_peers(db, run=open_run)
    assert total == 2 and [a is b for a, b in zip(peers, again, strict=True)] == [True, True]
    assert {p.peer_id: p.credited_samples for p in peers} == {first: 200, second: 100}
    assert len(client.get("/api/v1/runs/open-run/metrics").json()["points"]) == 2

    _store(db, open_run, T0 + 20, (first, 350), (second, 600))  # the next poll: read again at once
    peers, _ = swarm_service.list_peers(db, run=open_run)
    assert {p.peer_id: p.credited_samples for p in peers} == {first: 250, second: 500}
    page = client.get("/api/v1/runs/open-run/peers?limit=1&offset=1").json()
    assert page["total"] == 2 and [item["peer_id"] for item in page["items"]] == [second]  # by id
    assert len(client.get("/api/v1/runs/open-run/metrics").json()["points"]) == 3
    board = client.get("/api/v1/runs/open-run/leaderboard").json()["items"]
    assert [(row["rank"], row["samples"]) for row in board] == [(1, 500), (2, 250)]
    view = swarm_service.run_live_view(db, run=open_run, half_life_s=HOUR)
    assert view.version == 3 and view.point is not None and view.point.t == T0 + 20


def test_the_recent_score_decays_to_the_time_it_is_read(db, open_run):
    (peer,) = _peer_ids(1)
    _store(db, open_run, T0, (peer, 0))
    _store(db, open_run, T0 + 10, (peer, 1000))
    pages = [
        leaderboard(db, run=open_run, half_life_s=HOUR, order=LeaderboardOrder.recent, now=T0 + 10 + k * HOUR)
        for k in (0, 1, 2)
    ]
    assert [rows[0].recent_score for rows, _ in pages] == pytest.approx([1000, 500, 250])
    assert all(rows[0].rank == 1 and rows[0].samples == 1000 for rows, _ in pages)
    with pytest.raises(ValueError, match="half_life_s"):
        leaderboard(db, run=open_run, half_life_s=0)


def test_a_slow_reader_never_brings_back_an_older_snapshot():
    cache = SnapshotCache()
    newer = cache.get(1, (5, None))
    older = cache.get(1, (4, None))  # a reader whose transaction began before the 5th poll
    assert older is not newer and older.version == 4
    assert cache.get(1, (5, None)) is newer
    assert cache.get(2, (5, None)) is not newer  # each run has its own


def test_a_part_is_built_once_however_many_readers_ask():
    snapshot = RunSnapshot((1, None))
    builds: list[int] = []
    start = threading.Barrier(8)
    results: list[object] = []

    def build() -> object:
        builds.append(1)
        return object()

    def reader() -> None:
        start.wait()
        results.append(snapshot.part("peers", build))

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(builds) == 1 and len(results) == 8 and all(result is results[0] for result in results)
    assert snapshot.part(("nested", 1), lambda: snapshot.part("peers", build)) is results[0]


def test_snapshots_are_kept_per_database(db, open_run, tmp_path):
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(other_url)
    engine = make_engine(other_url)
    try:
        with make_session_factory(engine)() as other:
            assert run_snapshot(other, open_run.id) is not run_snapshot(db, open_run.id)
            assert run_snapshot(db, open_run.id) is run_snapshot(db, open_run.id)
    finally:
        engine.dispose()


def _shared_run(factory, secret: str) -> Run:
    with factory() as session:
        owner = create_user(
            session, email="o@example.org", username="olga", password="a long password", role="organizer"
        )
        body = RunCreate(
            slug="shared", name="Shared", recipe={"name": "albert", "config": {}}, target_batch_size=4096
        )
        run = create_run(session, owner=owner, data=body, secret_key=secret)
        session.commit()
        _store(session, run, T0, *((peer, 10) for peer in _peer_ids(3)))
        return run


@pytest.mark.timeout(120)
def test_the_sockets_of_a_run_share_one_message_per_poll(empty_db_url, tmp_path, monkeypatch):
    builds: list[int] = []
    build_message = backend.api.live._message

    def counting(*args):
        builds.append(1)
        return build_message(*args)

    monkeypatch.setattr(backend.api.live, "_message", counting)
    upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    secret = secrets.token_urlsafe(32)
    try:
        factory = make_session_factory(engine)
        run = _shared_run(factory, secret)
        settings = Settings(
            database_url=empty_db_url,
            secret_key=secret,
            secret_key_file=tmp_path / "unused.secret",
            monitor_enabled=False,
            live_poll_interval_s=0.05,
        )
        with TestClient(create_app(settings, engine=engine)) as client, contextlib.ExitStack() as stack:
            url = "/api/v1/runs/shared/live"
            sockets = [stack.enter_context(client.websocket_connect(url)) for _ in range(3)]
            firsts = [LiveUpdate.model_validate(socket.receive_json()) for socket in sockets]
            assert [update.version for update in firsts] == [1, 1, 1] and len(builds) == 1
            with factory() as session:
                _store(session, session.get(Run, run.id), T0 + 10)
            updates = [LiveUpdate.model_validate(socket.receive_json()) for socket in sockets]
            assert [update.version for update in updates] == [2, 2, 2] and len(builds) == 2
            assert all(update.summary.peers_online == 3 for update in updates)  # not offline yet
    finally:
        engine.dispose()
