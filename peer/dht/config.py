"""The DHT's parameters (`DHTConfig`) and its clock (`get_dht_time`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from peer.dht.query import ALPHA_VALUE
from peer.dht.routing import K_VALUE
from peer.dht.storage import StorageLimits


def get_dht_time() -> float:
    """The DHT's clock: seconds since the epoch. Expiration times are absolute in this clock."""
    return time.time()


@dataclass(frozen=True)
class DHTConfig:
    """Parameters of a DHT node; the defaults suit a public swarm. Durations are in seconds.

    - `num_replicas`: servers each value is stored on; also the k of store and get lookups.
    - `k`: bucket size, and the k of routing lookups (join, bucket refresh).
    - `alpha`: requests in flight per key during a lookup.
    - `request_timeout`: deadline of one RPC; a peer that misses it is banned with backoff.
    - `refresh_period`: a bucket with no lookup into its range for this long is refreshed.
    - `republish_period`: how often held records are pushed to their key's current nearest servers.
    - `maintenance_period`: how often maintenance runs (jittered by +-20 %).
    - `cache_values`: after a get, cache the value at the nearest peer on the lookup path that lacked it.
    - `storage_limits`: the limits of the store and of the cache.
    - `announce_maddrs`: addresses to announce instead of the listening ones (NAT, docker).
    - `max_connections`: close least recently used idle connections beyond this many (None: only the
      transport's idle timeout closes connections).
    """

    num_replicas: int = 8
    k: int = K_VALUE
    alpha: int = ALPHA_VALUE
    request_timeout: float = 3.0
    refresh_period: float = 600.0
    republish_period: float = 900.0
    maintenance_period: float = 30.0
    cache_values: bool = True
    storage_limits: StorageLimits = field(default_factory=StorageLimits)
    announce_maddrs: tuple[str, ...] = ()
    max_connections: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_replicas", "k", "alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")
        if self.max_connections is not None and (
            isinstance(self.max_connections, bool)
            or not isinstance(self.max_connections, int)
            or self.max_connections < 1
        ):
            raise ValueError(
                f"max_connections must be an integer of at least 1, or None, got {self.max_connections!r}"
            )
        for name in ("request_timeout", "refresh_period", "republish_period", "maintenance_period"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not isinstance(self.storage_limits, StorageLimits):
            kind = type(self.storage_limits).__name__
            raise TypeError(f"storage_limits must be a StorageLimits, not {kind}")
