"""The live WebSocket, fed by the monitor running inside the site (the app's lifespan starts it):
a peer publishes, the monitor stores, the socket pushes. On SQLite and PostgreSQL, each with a
database of its own (the monitor and the socket commit, so no rolled-back test transaction here)."""

from __future__ import annotations

import secrets

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from backend.app import create_app
from backend.db import make_engine, make_session_factory
from backend.migrate import upgrade
from backend.schemas import LiveUpdate, RunCreate
from backend.services.runs import create_run
from backend.services.users import create_user
from backend.settings import Settings
from peer.dht import DHT, DHTConfig, get_dht_time
from peer.optim.progress import PeerRecord, ProgressRecord, ProgressTracker, run_validators
from peer.utils.loop import run_coroutine

SLUG = "live-run"
TEST_SECRET = secrets.token_urlsafe(32)


def _publish(tracker: ProgressTracker, total: int) -> None:
    record = ProgressRecord(
        epoch=0,
        samples_accumulated=total,
        samples_per_second=25.0,
        loss=1.5,
        mini_steps=1,
        total_samples=total,
        time=get_dht_time(),
    )
    run_coroutine(tracker.apublish(record))
    run_coroutine(tracker.apublish_peer(PeerRecord(version="test", device="cpu")))


def _next_update(socket, accept) -> LiveUpdate:
    for _ in range(200):  # each message is one stored poll (every 0.5 s): bounded wait
        update = LiveUpdate.model_validate(socket.receive_json())
        if accept(update):
            return update
    raise AssertionError("the live socket never sent the expected update")


@pytest.mark.timeout(120)
def test_the_site_monitors_the_swarm_and_the_socket_pushes_each_update(empty_db_url, tmp_path):
    upgrade(empty_db_url)
    peer = DHT(record_validators=run_validators(SLUG), config=DHTConfig(request_timeout=2.0))
    engine = make_engine(empty_db_url)
    try:
        with make_session_factory(engine)() as session:
            owner = create_user(
                session, email="o@example.org", username="olga", password="a long password", role="organizer"
            )
            body = RunCreate(
                slug=SLUG,
                name="Live",
                recipe={"name": "char-transformer", "config": {}},
                target_batch_size=1000,
                auth_mode="open",
                initial_peers=peer.get_visible_maddrs(),
            )
            create_run(session, owner=owner, data=body, secret_key=TEST_SECRET)
            session.commit()
        settings = Settings(
            database_url=empty_db_url,
            secret_key=TEST_SECRET,
            public_url="http://testserver",
            monitor_enabled=True,
            monitor_interval_s=0.5,
            monitor_identity_dir=tmp_path / "monitor-keys",
            live_poll_interval_s=0.05,
        )
        tracker = ProgressTracker(peer, SLUG, 1000)
        _publish(tracker, 100)
        with TestClient(create_app(settings, engine=engine)) as client:
            with client.websocket_connect(f"/api/v1/runs/{SLUG}/live") as socket:
                first = _next_update(socket, lambda update: update.summary.peers_online == 1)
                assert first.run == SLUG and first.peers[0].peer_id == peer.peer_id.to_base58()
                assert first.peers[0].user is None and first.leaderboard[0].samples == 0
                _publish(tracker, 400)
                grown = _next_update(socket, lambda update: update.leaderboard[0].samples > 0)
                assert grown.version > first.version and grown.leaderboard[0].samples == 300
                assert grown.leaderboard[0].peer_id == peer.peer_id.to_base58()  # an open run: by PeerID
                assert grown.point is not None and grown.point.total_samples == 300
            metrics = client.get("/metrics").text
            assert f'hivemind_run_peers_online{{run="{SLUG}"}} 1' in metrics
            with pytest.raises(WebSocketDenialResponse) as refused:
                with client.websocket_connect("/api/v1/runs/nope/live"):
                    pass
            assert refused.value.status_code == 404 and refused.value.json()["error"]["code"] == "not_found"
            monitor = client.app.state.monitor
            assert monitor.running
        assert not monitor.running  # the lifespan stopped it, and it left the swarm
        assert monitor.monitor.watchers == {}
    finally:
        peer.shutdown()
        engine.dispose()
