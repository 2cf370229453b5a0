"""The monitor reads a real in-process swarm: peers with tokens from the run's authority publish
signed progress and peer records, as `hivemind-peer join` does, and the monitor stores them.

Checked here: the leaderboard credits the users the site issued the tokens to (not the usernames
peers declare), a forged record is dropped and counted (and shows in /metrics), an impossible claim
is flagged and not credited, and silent peers go offline. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import msgpack
import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from backend.models import MonitorStatus, Run, SwarmPeer
from backend.monitor import MonitorConfig, SwarmMonitor
from backend.monitor.store import StoreOptions
from peer import __version__ as peer_version
from peer.dht import DHT, DHTID, DHTConfig, DHTRecord, get_dht_time, owner_marker, sign_value
from peer.net.identity import Identity
from peer.net.tokens import AccessToken, TokenAuthorizer
from peer.optim.progress import PeerRecord, ProgressRecord, ProgressTracker, run_validators
from peer.utils.loop import run_coroutine

SLUG = "swarm-run"
TARGET = 1000
INTERVAL = 10.0
CONFIG = DHTConfig(request_timeout=2.0, maintenance_period=3600.0)


class Clock:
    def __init__(self) -> None:
        self.now = get_dht_time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Volunteer:
    """A peer of the run, as the join flow makes it: a token from the site, run validators."""

    def __init__(self, client, account, tmp_path, name: str, initial_peers: list[str], authority_key: str):
        key_path = tmp_path / f"{name}.key"
        peer_id = Identity.load_or_create(key_path).peer_id
        response = client.post(
            f"/api/v1/runs/{SLUG}/access-tokens",
            json={"peer_public_key": str(peer_id)},
            headers=account.headers,
        )
        assert response.status_code == 200, response.text
        token = AccessToken.from_text(response.json()["token"]).to_bytes()

        async def provide() -> bytes:
            return token

        self.dht = DHT(
            initial_peers,
            identity_path=key_path,
            authorizer=TokenAuthorizer(authority_key, SLUG, provide),
            record_validators=run_validators(SLUG),
            config=CONFIG,
        )
        self.peer_id = peer_id.to_base58()
        self.tracker = ProgressTracker(self.dht, SLUG, TARGET)

    def publish(
        self, total: int, *, speed: float = 30.0, epoch: int = 0, declared: str | None = None
    ) -> None:
        progress = ProgressRecord(
            epoch=epoch,
            samples_accumulated=total % TARGET,
            samples_per_second=speed,
            loss=3.0,
            mini_steps=1,
            total_samples=total,
            time=get_dht_time(),
        )
        info = PeerRecord(version=peer_version, reachability="direct", device="cpu", username=declared)
        run_coroutine(self.tracker.apublish(progress))  # as join does: a replica may refuse
        run_coroutine(self.tracker.apublish_peer(info))


def plant_forgeries(liar: DHT, servers: list[DHT], victim: str) -> None:
    """Records under `<run>_progress` signed by a stranger, planted as if replicas skipped checks:
    one claiming to be the victim, newer than the victim's own, on the `liar` replica, and one for a
    made-up peer on every server."""
    key = SLUG + "_progress"
    key_id = DHTID.from_key(key)
    expiration = get_dht_time() + 120
    impostor = Identity.generate()
    value = ProgressRecord(
        epoch=0, samples_accumulated=0, samples_per_second=1.0, mini_steps=1, total_samples=10**6, time=0.0
    ).model_dump()
    for subkey, holders in (
        (f"[owner:{victim}]", [liar]),
        (owner_marker(Identity.generate().peer_id), servers),
    ):
        record = DHTRecord.create(key, subkey, msgpack.packb(value), expiration)
        forged = sign_value(impostor, record.key, record.subkey, record.value, expiration)
        for dht in holders:
            dht.node.storage.store(key_id, forged, expiration, get_dht_time(), record.subkey)


@pytest.fixture
def swarm(client, db, organizer, make_account, tmp_path):
    response = client.post(
        "/api/v1/runs",
        json={
            "slug": SLUG,
            "name": "Swarm",
            "recipe": {"name": "char-transformer", "config": {}},
            "target_batch_size": TARGET,
            "auth_mode": "volunteers",
        },
        headers=organizer.headers,
    )
    assert response.status_code == 201, response.text
    authority_key = response.json()["authority_public_key"]
    alice, bob = make_account("alice"), make_account("bob")
    bootstrap = Volunteer(client, organizer, tmp_path, "bootstrap", [], authority_key)
    maddrs = bootstrap.dht.get_visible_maddrs()
    peers = {
        "alice": Volunteer(client, alice, tmp_path, "alice", maddrs, authority_key),
        "bob": Volunteer(client, bob, tmp_path, "bob", maddrs, authority_key),
    }
    run = db.scalar(select(Run).where(Run.slug == SLUG))
    run.initial_peers = maddrs
    db.commit()
    try:
        yield bootstrap, peers
    finally:
        for volunteer in (*peers.values(), bootstrap):
            volunteer.dht.shutdown()


@pytest.fixture
def monitor(connection, settings, tmp_path):
    clock = Clock()
    config = MonitorConfig(
        interval_s=INTERVAL,
        identity_dir=tmp_path / "monitor-keys",
        public_url="http://testserver",
        store=StoreOptions(offline_after_s=3 * INTERVAL, half_life_s=3600.0),
    )
    factory = sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    swarm_monitor = SwarmMonitor(config, factory, secret_key=settings.resolved_secret_key(), clock=clock)
    try:
        yield swarm_monitor, clock
    finally:
        swarm_monitor.shutdown()


def _board(client) -> dict[str, dict]:
    response = client.get(f"/api/v1/runs/{SLUG}/leaderboard")
    assert response.status_code == 200, response.text
    return {row["name"]: row for row in response.json()["items"]}


def _peers(client) -> dict[str, dict]:
    response = client.get(f"/api/v1/runs/{SLUG}/peers")
    assert response.status_code == 200, response.text
    return {row["peer_id"]: row for row in response.json()["items"]}


def _invalid_in_prometheus(client) -> float:
    lines = client.get("/metrics").text.splitlines()
    line = next(
        line for line in lines if line.startswith(f'hivemind_monitor_invalid_records_total{{run="{SLUG}"}}')
    )
    return float(line.split()[-1])


def test_the_monitor_reads_the_swarm_credits_users_and_drops_forgeries(client, db, swarm, monitor):
    bootstrap, peers = swarm
    swarm_monitor, clock = monitor
    alice, bob = peers["alice"], peers["bob"]
    alice.publish(1000, declared="bob")  # declared usernames are shown, never credited
    bob.publish(500)
    assert swarm_monitor.poll_once() == {SLUG: None}

    seen = _peers(client)
    assert set(seen) == {alice.peer_id, bob.peer_id}
    assert seen[alice.peer_id]["user"] == "alice" and seen[alice.peer_id]["declared_username"] == "bob"
    assert seen[bob.peer_id]["user"] == "bob" and all(peer["online"] for peer in seen.values())
    board = _board(client)
    assert board["alice"]["samples"] == 0 and board["bob"]["samples"] == 0  # first sighting: the baseline

    clock.advance(INTERVAL)
    alice.publish(1300, declared="bob")
    bob.publish(620)
    assert swarm_monitor.poll_once() == {SLUG: None}
    board = _board(client)
    assert (board["alice"]["samples"], board["bob"]["samples"]) == (300, 120)
    assert board["alice"]["rank"] == 1 and board["alice"]["time_online_s"] == pytest.approx(INTERVAL)
    assert board["alice"]["recent_score"] == pytest.approx(300, rel=1e-3)

    # forged records planted on every server: dropped by the monitor, counted, alice's real one kept
    clock.advance(INTERVAL)
    alice.publish(1400)
    bob.publish(700)
    plant_forgeries(bootstrap.dht, [bootstrap.dht, alice.dht, bob.dht], alice.peer_id)
    assert swarm_monitor.poll_once() == {SLUG: None}
    status = db.scalar(select(MonitorStatus).join(Run).where(Run.slug == SLUG))
    db.refresh(status)
    assert status.invalid_records >= 2
    assert _invalid_in_prometheus(client) == status.invalid_records
    assert set(_peers(client)) == {alice.peer_id, bob.peer_id}
    board = _board(client)
    assert (board["alice"]["samples"], board["bob"]["samples"]) == (400, 200)

    # an impossible claim: flagged, not credited, and its samples never count later either
    clock.advance(INTERVAL)
    alice.publish(1500)
    bob.publish(10_000_000)
    assert swarm_monitor.poll_once() == {SLUG: None}
    board = _board(client)
    assert board["bob"]["samples"] == 200 and board["bob"]["rejected_samples"] == 10_000_000 - 700
    assert board["bob"]["flagged_claims"] == 1 and board["alice"]["samples"] == 500
    flagged = _peers(client)[bob.peer_id]
    assert flagged["flagged"] and "epoch" in flagged["flag_reason"]
    clock.advance(INTERVAL)
    alice.publish(1600)
    bob.publish(10_000_050)
    swarm_monitor.poll_once()
    assert _board(client)["bob"]["samples"] == 250 and not _peers(client)[bob.peer_id]["flagged"]

    # bob falls silent: after three intervals without a new record he is offline, alice is not
    for _ in range(4):
        clock.advance(INTERVAL)
        alice.publish(1700)
        swarm_monitor.poll_once()
    seen = _peers(client)
    assert seen[alice.peer_id]["online"] and not seen[bob.peer_id]["online"]
    run_view = client.get(f"/api/v1/runs/{SLUG}/metrics").json()
    assert run_view["points"][-1]["peers"] == 1
    assert run_view["points"][-1]["total_samples"] == _board(client)["alice"]["samples"] + 250
    rows = db.scalars(select(SwarmPeer).where(SwarmPeer.peer_id == bootstrap.peer_id)).all()
    assert rows == []  # the bootstrap node publishes nothing, so it is not a peer of the run

    # a paused run is no longer watched: the monitor leaves its swarm and nobody shows as online
    run = db.scalar(select(Run).where(Run.slug == SLUG))
    run.status = "paused"
    db.commit()
    assert swarm_monitor.poll_once() == {} and swarm_monitor.watchers == {}
    assert not any(peer["online"] for peer in _peers(client).values())
    assert client.get(f"/api/v1/runs/{SLUG}/leaderboard").json()["total"] == 2  # the credit stays
