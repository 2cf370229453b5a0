"""Churn: one of three `hivemind-peer join` processes is killed (SIGKILL: no goodbye, no checkpoint on
exit) and restarted mid-run. The other two keep training, and the restarted peer, same identity and
data dir, loads the swarm's state and catches up to the global epoch."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator

import pytest
from e2e_helpers import Volunteer, bootstrap_node, wait_for, write_manifest

from peer import DHT
from peer.optim import ProgressTracker, run_validators
from peer.utils.loop import run_coroutine

pytestmark = pytest.mark.slow


class SwarmWatcher:
    """Reads every peer's `<run>_progress` record from the DHT, as `hivemind-peer status` does."""

    def __init__(self, address: str, slug: str = "tiny"):
        self.dht = DHT(initial_peers=[address], client_mode=True, record_validators=run_validators(slug))
        self.tracker = ProgressTracker(self.dht, slug, target_batch_size=48)

    def epochs(self) -> dict[str, int]:
        progress = run_coroutine(self.tracker.afetch())
        return {str(peer_id): record.epoch for peer_id, record in progress.peers.items()}

    def epoch_of(self, peer: Volunteer) -> int:
        """The epoch `peer` last published (-1 before it has joined)."""
        joined = re.findall(r"as peer (\S+)", peer.output())
        return self.epochs().get(joined[-1], -1) if joined else -1

    def close(self) -> None:
        self.dht.shutdown()


@pytest.fixture
def watched_swarm(tmp_path) -> Iterator[tuple[list[Volunteer], SwarmWatcher, object]]:
    with bootstrap_node(tmp_path / "bootstrap.log") as address:
        manifest = write_manifest(tmp_path / "run.json", [address])
        peers = [Volunteer.start(manifest, tmp_path, name) for name in ("alice", "bob", "carol")]
        watcher = SwarmWatcher(address)
        try:
            yield peers, watcher, manifest
        finally:
            watcher.close()
            for peer in peers:
                if peer.process.poll() is None:
                    peer.process.kill()
                    peer.process.wait()


def test_a_killed_peer_restarts_and_catches_up(watched_swarm, tmp_path) -> None:
    (alice, bob, carol), watcher, manifest = watched_swarm
    wait_for(
        lambda: min(watcher.epoch_of(peer) for peer in (alice, bob, carol)) >= 3,
        timeout=120,
        what="three peers training",
    )
    carol.process.send_signal(signal.SIGKILL)
    carol.process.wait(timeout=30)
    at_kill = max(watcher.epoch_of(alice), watcher.epoch_of(bob))
    # the others keep going without her
    wait_for(
        lambda: min(watcher.epoch_of(alice), watcher.epoch_of(bob)) >= at_kill + 5,
        timeout=90,
        what="alice and bob to train on after carol was killed",
    )
    at_restart = max(watcher.epoch_of(alice), watcher.epoch_of(bob))
    restarted = Volunteer.start(manifest, tmp_path, "carol")  # same data dir: same PeerID
    try:
        wait_for(
            lambda: watcher.epoch_of(restarted) >= at_restart,
            timeout=90,
            what=f"the restarted carol to reach epoch {at_restart}",
        )
        found = re.findall(r"loaded the swarm's state at epoch (\d+)", restarted.output())
        loaded = [int(epoch) for epoch in found]
        assert loaded and max(loaded) >= at_restart, restarted.output()[-3000:]
        # and she trains with them from there: the swarm's epoch keeps rising with all three in it
        swarm_epoch = max(watcher.epoch_of(peer) for peer in (alice, bob, restarted))
        wait_for(
            lambda: min(watcher.epoch_of(peer) for peer in (alice, bob, restarted)) >= swarm_epoch + 2,
            timeout=60,
            what="all three to advance together",
        )
    finally:
        codes = {peer.name: peer.stop() for peer in (alice, bob, restarted)}
    assert codes == {"alice": 0, "bob": 0, "carol": 0}, restarted.output()[-3000:]
    for peer in (alice, bob, restarted):
        assert peer.left_at_epoch() >= at_restart
