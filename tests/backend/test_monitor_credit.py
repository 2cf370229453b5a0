"""Who an open run's peer is credited to, on SQLite and PostgreSQL. Anyone may ask for a token for a
PeerID seen in the DHT, so on an open run the site's token counts only if the peer itself names that
user in its signed `<run>_peers` record: a peer that joined without an account cannot be claimed."""

from __future__ import annotations

import time

import pytest
from site_helpers import run_body
from sqlalchemy import select

from backend.models import Run, SwarmPeer, User
from backend.monitor.accounting import ClaimRules
from backend.monitor.records import PeerSighting, SwarmReading
from backend.monitor.store import RunAccounting, StoreOptions, record_reading
from peer.net.identity import Identity
from peer.optim.progress import PeerRecord, ProgressRecord

SLUG = "credit"


def _sighting(peer_id: str, at: float, total: int, username: str | None) -> PeerSighting:
    progress = ProgressRecord(
        epoch=1, samples_accumulated=0, samples_per_second=10.0, mini_steps=1, total_samples=total, time=at
    )
    info = PeerRecord(version="0.1.0", maddrs=[], reachability="direct", device="cpu", username=username)
    return PeerSighting(peer_id, progress=progress, info=info, expiration=at + 60)


@pytest.mark.parametrize("open_run", [True, False])
def test_a_token_for_someone_elses_peer_id_claims_nothing_on_an_open_run(
    client, db, organizer, make_account, open_run
):
    body = run_body(SLUG, auth_mode="open" if open_run else "volunteers", target_batch_size=1000)
    assert client.post("/api/v1/runs", json=body, headers=organizer.headers).status_code == 201
    run_id = db.scalar(select(Run.id).where(Run.slug == SLUG))
    alice, mallory = make_account("alice"), make_account("mallory")
    own, anonymous, impostor = (Identity.generate().peer_id.to_base58() for _ in range(3))
    for account, peer_id in ((alice, own), (mallory, anonymous), (mallory, impostor)):
        response = client.post(
            f"/api/v1/runs/{SLUG}/access-tokens", json={"peer_public_key": peer_id}, headers=account.headers
        )
        assert response.status_code == 200, response.text
    declared = {own: "alice", anonymous: None, impostor: "alice"}  # the impostor peer names alice
    accounting = RunAccounting(run_id=run_id, rules=ClaimRules(target_batch_size=1000), credit_peers=open_run)
    t0 = time.time() - 100
    for step in range(2):
        at = t0 + 10 * step
        peers = {peer: _sighting(peer, at, 100 * step, name) for peer, name in declared.items()}
        record_reading(db, run=accounting, reading=SwarmReading(time=at, peers=peers), options=StoreOptions())
        db.commit()
    credited = {
        row.peer_id: db.get(User, row.user_id).username if row.user_id else None
        for row in db.scalars(select(SwarmPeer).where(SwarmPeer.run_id == run_id))
    }
    if open_run:  # the peer and the token must agree
        assert credited == {own: "alice", anonymous: None, impostor: None}
        board = client.get(f"/api/v1/runs/{SLUG}/leaderboard").json()["items"]
        assert {row["name"] for row in board} >= {"alice"} and "mallory" not in {row["name"] for row in board}
    else:  # a token run's peer needed its token to join: the first issuance is its owner's
        assert credited == {own: "alice", anonymous: "mallory", impostor: "mallory"}


def test_peers_that_vouch_for_each_other_with_absurd_speeds_are_flagged(client, db, organizer):
    """Two peers claiming 10^6 samples/s each used to loosen each other's bounds (the sum of the
    other peers' claims) enough to be credited 10^7 samples per poll while the swarm stayed at one
    epoch; other peers' claims now count by their median, so a minority vouches for nothing."""
    body = run_body(SLUG, auth_mode="open", target_batch_size=1000)
    assert client.post("/api/v1/runs", json=body, headers=organizer.headers).status_code == 201
    run_id = db.scalar(select(Run.id).where(Run.slug == SLUG))
    honest = [Identity.generate().peer_id.to_base58() for _ in range(2)]
    sybils = [Identity.generate().peer_id.to_base58() for _ in range(2)]
    accounting = RunAccounting(run_id=run_id, rules=ClaimRules(target_batch_size=1000), credit_peers=True)
    t0 = time.time() - 100
    for step in range(4):
        at = t0 + 10 * step
        peers = {}
        for peer in honest + sybils:
            fast = peer in sybils
            progress = ProgressRecord(
                epoch=3,
                samples_accumulated=0,
                samples_per_second=1e6 if fast else 30.0,
                mini_steps=1,
                total_samples=step * (10_000_000 if fast else 300),
                time=at,
            )
            peers[peer] = PeerSighting(peer, progress=progress, expiration=at + 60)
        record_reading(db, run=accounting, reading=SwarmReading(time=at, peers=peers), options=StoreOptions())
        db.commit()
    rows = {row.peer_id: row for row in db.scalars(select(SwarmPeer).where(SwarmPeer.run_id == run_id))}
    assert all(rows[peer].credited_samples == 900 and not rows[peer].flagged for peer in honest)
    assert all(rows[peer].credited_samples == 0 and rows[peer].flagged for peer in sybils)
