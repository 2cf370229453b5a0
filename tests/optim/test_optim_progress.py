"""The swarm's progress: signed records in the DHT, aggregated into epochs, speed and ETA."""

from __future__ import annotations

import math

import pytest

from peer import DHT, Identity, get_dht_time
from peer.dht import DHTConfig, InvalidRecordError, owner_marker
from peer.optim import ProgressRecord, ProgressTracker, aggregate, run_validators
from peer.utils.loop import run_coroutine


def _record(epoch: int, samples: int, speed: float = 10.0, time: float = 0.0) -> ProgressRecord:
    return ProgressRecord(
        epoch=epoch, samples_accumulated=samples, samples_per_second=speed, mini_steps=1, time=time
    )


def test_aggregate_counts_only_the_current_epoch() -> None:
    peers = {
        Identity.generate().peer_id: _record(3, 40),
        Identity.generate().peer_id: _record(3, 30),
        Identity.generate().peer_id: _record(2, 500),
    }
    progress = aggregate(peers, target_batch_size=100, now=0.0)
    assert progress.epoch == 3 and progress.samples_accumulated == 70 and progress.num_peers == 3
    assert not progress.ready_to_step
    assert progress.samples_per_second == pytest.approx(30.0)
    assert progress.eta_next_epoch == pytest.approx(1.0)


def test_estimated_samples_extrapolate_each_peer_of_the_epoch() -> None:
    me, fast, slow, behind = (Identity.generate().peer_id for _ in range(4))
    peers = {
        me: _record(3, 10, speed=100.0, time=0.0),
        fast: _record(3, 20, speed=100.0, time=1.0),  # 2 s ago at 100/s: 200, capped at one target batch
        slow: _record(3, 5, speed=2.0, time=2.0),  # 1 s ago: 5 + 2
        behind: _record(2, 50, speed=100.0, time=0.0),  # an older epoch counts for nothing
    }
    progress = aggregate(peers, target_batch_size=100, now=3.0)
    assert progress.estimated_samples(3.0, exclude=me) == pytest.approx(20 + 100 + 5 + 2)
    assert progress.estimated_samples(0.0, exclude=me) == pytest.approx(25)  # records from the future
    assert progress.estimated_samples(3.0) == pytest.approx(10 + 100 + 20 + 100 + 7)


def test_aggregate_of_nobody_never_finishes() -> None:
    progress = aggregate({}, target_batch_size=10, now=0.0)
    assert progress.num_peers == 0 and math.isinf(progress.eta_next_epoch)


def test_progress_records_round_trip_through_the_dht_and_cannot_be_forged() -> None:
    config = DHTConfig(request_timeout=2.0)
    first = DHT(record_validators=run_validators("demo"), config=config)
    second = DHT(
        initial_peers=first.get_visible_maddrs(), record_validators=run_validators("demo"), config=config
    )
    try:
        tracker_a = ProgressTracker(first, "demo", target_batch_size=100)
        tracker_b = ProgressTracker(second, "demo", target_batch_size=100)
        assert run_coroutine(tracker_a.apublish(_record(0, 60, time=get_dht_time())))
        assert run_coroutine(tracker_b.apublish(_record(0, 50, time=get_dht_time())))
        progress = run_coroutine(tracker_b.afetch())
        assert progress.num_peers == 2 and progress.samples_accumulated == 110 and progress.ready_to_step
        # second cannot write under first's subkey, and a schema-violating record is refused
        with pytest.raises(InvalidRecordError, match="not our identity"):
            second.store(
                "demo_progress",
                _record(9, 1).model_dump(),
                get_dht_time() + 60,
                subkey=owner_marker(first.peer_id),
            )
        with pytest.raises(InvalidRecordError, match="schema"):
            second.store(
                "demo_progress", {"epoch": -1}, get_dht_time() + 60, subkey=owner_marker(second.peer_id)
            )
        assert run_coroutine(tracker_a.afetch()).epoch == 0
    finally:
        second.shutdown()
        first.shutdown()
