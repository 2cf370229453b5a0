"""Peers that failed to answer, banned for a while with exponential backoff.

After its n-th consecutive failure a peer is banned for ``min(base_time * backoff_rate**(n-1),
max_time)`` seconds. A success resets its count. A peer whose ban ended more than `max_time` ago is
forgotten by `prune`, so its next failure starts from `base_time` again. The clock is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from peer.net.identity import PeerID

BLACKLIST_BASE_TIME = 5.0
BLACKLIST_MAX_TIME = 600.0
BLACKLIST_BACKOFF_RATE = 2.0


@dataclass
class _BanState:
    failures: int
    banned_until: float


class Blacklist:
    """Exponential-backoff bans for unresponsive peers (see the module docstring)."""

    def __init__(
        self,
        base_time: float = BLACKLIST_BASE_TIME,
        max_time: float = BLACKLIST_MAX_TIME,
        backoff_rate: float = BLACKLIST_BACKOFF_RATE,
    ):
        if not math.isfinite(base_time) or base_time <= 0:
            raise ValueError(f"base_time must be a positive number, got {base_time}")
        if not math.isfinite(max_time) or max_time < base_time:
            raise ValueError(f"max_time must be at least base_time, got {max_time}")
        if not math.isfinite(backoff_rate) or backoff_rate < 1:
            raise ValueError(f"backoff_rate must be at least 1, got {backoff_rate}")
        self.base_time = base_time
        self.max_time = max_time
        self.backoff_rate = backoff_rate
        self._bans: dict[PeerID, _BanState] = {}

    def register_failure(self, peer_id: PeerID, now: float) -> float:
        """Count a failure of `peer_id` at `now`; returns the time its ban ends."""
        state = self._bans.get(peer_id)
        failures = 1 if state is None else state.failures + 1
        exponent = min(failures - 1, 1024)  # large enough to reach max_time, small enough for floats
        try:
            duration = min(self.base_time * self.backoff_rate**exponent, self.max_time)
        except OverflowError:
            duration = self.max_time
        self._bans[peer_id] = _BanState(failures, now + duration)
        return now + duration

    def register_success(self, peer_id: PeerID) -> None:
        """`peer_id` answered: lift its ban and reset its failure count."""
        self._bans.pop(peer_id, None)

    def is_banned(self, peer_id: PeerID, now: float) -> bool:
        state = self._bans.get(peer_id)
        return state is not None and now < state.banned_until

    def banned_until(self, peer_id: PeerID) -> float | None:
        """When the current or last ban of `peer_id` ends, or None if it has no failures on record."""
        state = self._bans.get(peer_id)
        return None if state is None else state.banned_until

    def failures(self, peer_id: PeerID) -> int:
        state = self._bans.get(peer_id)
        return 0 if state is None else state.failures

    def prune(self, now: float) -> int:
        """Forget peers whose ban ended more than `max_time` ago; returns how many were forgotten."""
        stale = [peer for peer, state in self._bans.items() if now - state.banned_until > self.max_time]
        for peer_id in stale:
            del self._bans[peer_id]
        return len(stale)

    def __len__(self) -> int:
        return len(self._bans)
