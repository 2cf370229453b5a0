"""The monitor's write path against records it cannot store, and against polls that fail; on SQLite and
PostgreSQL.

A peer of an older version or a future schema may send numbers beyond the columns (an epoch of 2^31 is
too big for PostgreSQL's Integer, a total of 2^63 for any BigInteger) or text PostgreSQL refuses (a
NUL): its sighting is dropped and counted, and the honest peers of the same poll are stored. Failed
polls take silent peers offline, as readings do.
"""

from __future__ import annotations

import math
import re
import time

import pytest
from site_helpers import run_body
from sqlalchemy import select

from backend.models import LeaderboardEntry, MonitorStatus, Run, SwarmPeer
from backend.monitor.accounting import ClaimRules
from backend.monitor.records import PeerSighting, SwarmReading
from backend.monitor.store import (
    INT32_MAX,
    INT64_MAX,
    RunAccounting,
    StoreOptions,
    record_failure,
    record_reading,
)
from peer.net.identity import Identity
from peer.optim.progress import MAX_SAMPLES, PeerRecord, ProgressRecord

SLUG = "bounds"
T0 = time.time() - 600
OPTIONS = StoreOptions(offline_after_s=30)
HONEST = {
    "epoch": 2,
    "samples_accumulated": 10,
    "samples_per_second": 20.0,
    "loss": 2.5,
    "mini_steps": 1,
    "total_samples": 1000,
    "time": T0,
    "client_mode": False,
}
INFO = {"version": "0.1.0", "maddrs": [], "reachability": "direct", "device": "cuda", "username": "ann"}


def progress(**fields) -> ProgressRecord:
    """A record as a peer with another schema could send it: `model_construct` skips this schema's
    bounds, as the monitor must not rely on them."""
    return ProgressRecord.model_construct(**{**HONEST, **fields})


def sighting(peer_id: str, at: float, *, info: PeerRecord | None = None, **fields) -> PeerSighting:
    return PeerSighting(peer_id, progress=progress(**{"time": at, **fields}), info=info, expiration=at + 60)


def new_peer() -> str:
    return Identity.generate().peer_id.to_base58()


@pytest.fixture
def run_id(client, db, organizer) -> int:
    body = run_body(SLUG, auth_mode="open", target_batch_size=1000)
    assert client.post("/api/v1/runs", json=body, headers=organizer.headers).status_code == 201
    return db.scalar(select(Run.id).where(Run.slug == SLUG))


def store(db, run_id: int, *sightings: PeerSighting, at: float) -> MonitorStatus:
    accounting = RunAccounting(run_id=run_id, rules=ClaimRules(target_batch_size=1000), credit_peers=True)
    reading = SwarmReading(time=at, peers={item.peer_id: item for item in sightings})
    status = record_reading(db, run=accounting, reading=reading, options=OPTIONS)
    db.commit()
    return status


def peer_row(db, run_id: int, peer_id: str) -> SwarmPeer | None:
    return db.scalar(select(SwarmPeer).where(SwarmPeer.run_id == run_id, SwarmPeer.peer_id == peer_id))


HOSTILE = {
    "epoch 2^31": {"epoch": 2**31},
    "epoch below zero": {"epoch": -1},
    "total 2^63": {"total_samples": 2**63},
    "total 2^64 - 1": {"total_samples": 2**64 - 1},
    "accumulated 2^63": {"samples_accumulated": 2**63},
    "infinite speed": {"samples_per_second": math.inf},
    "NaN loss": {"loss": math.nan},
    "huge loss": {"loss": 1e308},
    "infinite time": {"time": math.inf},
    "NUL in the version": {"info": PeerRecord.model_construct(**{**INFO, "version": "0.1\x00"})},
    "a long username": {"info": PeerRecord.model_construct(**{**INFO, "username": "u" * 65})},
}


@pytest.mark.parametrize("fields", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_sighting_beyond_the_columns_is_dropped_and_the_honest_peers_are_stored(db, run_id, fields):
    honest, hostile = new_peer(), new_peer()
    for step in range(2):
        at = T0 + 10 * step
        store(
            db,
            run_id,
            sighting(honest, at, total_samples=1000 + 100 * step, info=PeerRecord(**INFO)),
            sighting(hostile, at, **fields),
            at=at,
        )
    db.expire_all()
    status = db.scalar(select(MonitorStatus).where(MonitorStatus.run_id == run_id))
    assert status.polls == 2 and status.errors == 0 and status.invalid_records == 2
    assert status.peers_online == 1 and status.epoch == 2 and status.total_samples == 100
    row = peer_row(db, run_id, honest)
    assert row.online and row.total_samples == 1100 and row.credited_samples == 100
    assert row.version == "0.1.0" and row.declared_username == "ann"
    assert peer_row(db, run_id, hostile) is None


def test_the_largest_values_the_columns_hold_are_stored(db, run_id):
    peer = new_peer()
    store(db, run_id, sighting(peer, T0, epoch=INT32_MAX, total_samples=INT64_MAX, loss=-1e300), at=T0)
    db.expire_all()
    row = peer_row(db, run_id, peer)
    assert (row.epoch, row.total_samples, row.loss) == (INT32_MAX, INT64_MAX, -1e300)
    status = db.scalar(select(MonitorStatus).where(MonitorStatus.run_id == run_id))
    assert status.invalid_records == 0 and status.epoch == INT32_MAX


def test_counters_that_only_grow_stop_at_their_columns_limits(db, run_id):
    """A peer that restarts and jumps again, poll after poll, grows its rejected samples by up to 2^53
    each time; the counters stop at the limit instead of failing every later poll."""
    liar = new_peer()
    store(db, run_id, sighting(liar, T0, total_samples=0), at=T0)
    row = peer_row(db, run_id, liar)
    entry = db.scalar(select(LeaderboardEntry).where(LeaderboardEntry.run_id == run_id))
    row.rejected_samples = entry.rejected_samples = INT64_MAX - 10
    row.flagged_claims = entry.flagged_claims = INT32_MAX
    db.commit()
    status = store(db, run_id, sighting(liar, T0 + 10, total_samples=MAX_SAMPLES), at=T0 + 10)
    assert status.flagged_claims == 1
    db.expire_all()
    row, entry = peer_row(db, run_id, liar), db.get(LeaderboardEntry, entry.id)
    assert row.flagged and row.rejected_samples == entry.rejected_samples == INT64_MAX
    assert row.flagged_claims == entry.flagged_claims == INT32_MAX and row.credited_samples == 0


def test_failed_polls_take_silent_peers_offline(client, db, run_id):
    early, late = new_peer(), new_peer()
    store(db, run_id, sighting(early, T0), sighting(late, T0), at=T0)
    store(db, run_id, sighting(late, T0 + 20, total_samples=1100), at=T0 + 20)
    status = db.scalar(select(MonitorStatus).where(MonitorStatus.run_id == run_id))
    version = status.version

    def online_in_prometheus() -> float:
        text = client.get("/metrics").text
        match = re.search(rf'^hivemind_run_peers_online{{run="{SLUG}"}} (\S+)$', text, re.MULTILINE)
        assert match, text
        return float(match.group(1))

    assert status.peers_online == 2 and online_in_prometheus() == 2
    record_failure(db, run_id=run_id, error="timeout", now=T0 + 25, options=OPTIONS)
    db.commit()
    assert status.peers_online == 2 and status.version == version  # nobody silent for 30 s yet
    record_failure(db, run_id=run_id, error="timeout", now=T0 + 40, options=OPTIONS)
    db.commit()
    assert not peer_row(db, run_id, early).online and peer_row(db, run_id, late).online
    assert status.peers_online == 1 and status.version == version + 1 and status.errors == 2
    assert status.samples_per_second == pytest.approx(20.0)  # the last reading's, of the peer still there
    assert online_in_prometheus() == 1
    record_failure(db, run_id=run_id, error="timeout", now=T0 + 60, options=OPTIONS)
    db.commit()
    assert not peer_row(db, run_id, late).online
    assert (status.peers_online, status.samples_per_second, status.eta_s) == (0, 0.0, None)
    assert status.version == version + 2 and online_in_prometheus() == 0


def test_a_failed_poll_without_options_uses_the_default_offline_threshold(db, run_id):
    peer = new_peer()
    store(db, run_id, sighting(peer, T0), at=T0)
    record_failure(db, run_id=run_id, error="timeout", now=T0 + StoreOptions().offline_after_s + 1)
    db.commit()
    assert not peer_row(db, run_id, peer).online
