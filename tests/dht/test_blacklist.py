"""Exponential-backoff bans of unresponsive peers."""

from __future__ import annotations

import pytest

from peer.dht.blacklist import Blacklist
from peer.net.identity import PeerID

PEER = PeerID(bytes([0x12, 32]) + bytes(range(32)))
OTHER = PeerID(bytes([0x12, 32]) + bytes(range(1, 33)))


def test_ban_durations_grow_exponentially_up_to_the_maximum():
    blacklist = Blacklist(base_time=1.0, max_time=10.0, backoff_rate=2.0)
    durations = [blacklist.register_failure(PEER, 100.0) - 100.0 for _ in range(6)]
    assert durations == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert blacklist.failures(PEER) == 6


def test_a_ban_lasts_until_its_end_time():
    blacklist = Blacklist(base_time=5.0)
    until = blacklist.register_failure(PEER, 10.0)
    assert until == 15.0 and blacklist.banned_until(PEER) == 15.0
    assert blacklist.is_banned(PEER, 14.9) and not blacklist.is_banned(PEER, 15.0)
    assert not blacklist.is_banned(OTHER, 10.0) and blacklist.banned_until(OTHER) is None


def test_success_resets_the_backoff():
    blacklist = Blacklist(base_time=1.0, max_time=100.0)
    for _ in range(4):
        blacklist.register_failure(PEER, 0.0)
    blacklist.register_success(PEER)
    assert not blacklist.is_banned(PEER, 0.0) and blacklist.failures(PEER) == 0
    assert blacklist.register_failure(PEER, 0.0) == 1.0


def test_prune_forgets_peers_quiet_for_max_time():
    blacklist = Blacklist(base_time=1.0, max_time=10.0)
    blacklist.register_failure(PEER, 0.0)  # ban ends at 1
    blacklist.register_failure(OTHER, 5.0)  # ban ends at 6
    assert blacklist.prune(11.0) == 0
    assert blacklist.prune(11.5) == 1 and blacklist.failures(PEER) == 0 and len(blacklist) == 1


def test_many_failures_do_not_overflow():
    blacklist = Blacklist(base_time=1.0, max_time=60.0, backoff_rate=1e10)
    for _ in range(2000):
        until = blacklist.register_failure(PEER, 0.0)
    assert until == 60.0


def test_invalid_parameters_are_refused_by_name():
    with pytest.raises(ValueError, match="base_time"):
        Blacklist(base_time=0.0)
    with pytest.raises(ValueError, match="max_time"):
        Blacklist(base_time=5.0, max_time=1.0)
    with pytest.raises(ValueError, match="backoff_rate"):
        Blacklist(backoff_rate=0.5)
