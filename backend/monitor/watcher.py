"""One run's swarm, seen through a client-mode DHT peer of the monitor's own.

Each run is its own swarm: the watcher joins it through the run's `initial_peers`, with the run's
record validators (signatures always, and `peer.optim.run_validators`). On a token run the monitor
shows a token like every peer must: it mints its own with the run's authority key (username
`site-monitor`), and mints a fresh one before the current one expires. The watcher never stores
anything in the swarm (value caching is off) and is never on the training path: it only reads.

Its identity is a key file per run in the monitor's identity folder (created with mode 0600), so the
monitor keeps its PeerID per run across restarts and two runs never share one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.monitor.records import (
    SwarmReading,
    parse_expert_declarations,
    parse_swarm_records,
    peers_key,
    progress_key,
)
from peer.dht import DHT, DHTConfig
from peer.net.identity import Identity, PeerID
from peer.net.tokens import AccessToken, AccessTokenAuthority, TokenAuthorizer
from peer.optim.progress import run_validators

logger = logging.getLogger(__name__)
MONITOR_USERNAME = "site-monitor"


@dataclass(frozen=True)
class RunSpec:
    """What the monitor needs to watch one run (read from the site's database)."""

    run_id: int
    slug: str
    initial_peers: tuple[str, ...]
    target_batch_size: int
    open: bool  # the run needs no token (its peers without one are credited under their PeerID)
    local_updates: bool = False  # DiLoCo: epochs are local rounds (see backend.monitor.accounting)
    expert_uids: tuple[str, ...] = ()
    authority: AccessTokenAuthority | None = field(default=None, compare=False, repr=False)
    authority_public_key: bytes = b""
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # for hooks

    @property
    def fingerprint(self) -> tuple:
        """What the watcher's DHT depends on: when it changes, the watcher is restarted."""
        return (self.initial_peers, self.open, self.authority_public_key)


class RunWatcher:
    """The monitor's client-mode DHT peer in one run's swarm (see the module docstring)."""

    def __init__(
        self,
        spec: RunSpec,
        *,
        identity_dir: Path,
        token_lifetime_s: float,
        dht_config: DHTConfig | None = None,
    ):
        if token_lifetime_s < 60:
            raise ValueError("token_lifetime_s must be at least 60 seconds")
        if not spec.open and spec.authority is None:
            raise ValueError(f"run {spec.slug!r} needs tokens, but spec.authority is None")
        self.spec = spec
        self.identity_path = Path(identity_dir).expanduser() / f"{spec.slug}.key"
        self.token_lifetime_s = token_lifetime_s
        self.dht_config = dht_config or DHTConfig(cache_values=False)
        self.dht: DHT | None = None
        self._peer_id: PeerID | None = None
        self._token: AccessToken | None = None

    @property
    def started(self) -> bool:
        return self.dht is not None and self.dht.is_alive

    async def astart(self) -> None:
        """Join the run's swarm (a no-op when already in it); raises if no initial peer answers."""
        if self.started:
            return
        self.identity_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._peer_id = Identity.load_or_create(self.identity_path).peer_id
        dht = DHT(
            self.spec.initial_peers,
            client_mode=True,
            start=False,
            identity_path=self.identity_path,
            authorizer=self._authorizer(),
            record_validators=run_validators(self.spec.slug),
            config=self.dht_config,
        )
        await dht.astart()
        self.dht = dht
        logger.info("Monitoring run %r as %s", self.spec.slug, self._peer_id)

    def _authorizer(self) -> TokenAuthorizer | None:
        if self.spec.open or self.spec.authority is None:
            return None
        return TokenAuthorizer(self.spec.authority.public_key, self.spec.slug, self._provide_token)

    async def _provide_token(self) -> bytes:
        """The monitor's own token for this run, minted anew when the current one nears expiry."""
        assert self.spec.authority is not None and self._peer_id is not None
        margin = min(600.0, self.token_lifetime_s / 4)
        if self._token is None or self._token.expires_at - time.time() < margin:
            self._token = self.spec.authority.issue(
                MONITOR_USERNAME, self._peer_id, self.spec.slug, self.token_lifetime_s
            )
        return self._token.to_bytes()

    async def aread(self, clock: Callable[[], float] = time.time) -> SwarmReading:
        """Read the run's progress and peer records (and expert declarations for an MoE run)."""
        if self.dht is None or self.dht.node is None:
            raise RuntimeError(f"the watcher of run {self.spec.slug!r} is not started")
        protocol = self.dht.node.protocol
        dropped_before = protocol.num_invalid_records
        started = time.monotonic()
        keys = [progress_key(self.spec.slug), peers_key(self.spec.slug)]
        found = await self.dht.aget_many(keys, latest=True)
        sightings, invalid = parse_swarm_records(found[keys[0]], found[keys[1]])
        experts = None
        if self.spec.expert_uids:
            declared = await self.dht.aget_many(list(self.spec.expert_uids), latest=True)
            experts, malformed = parse_expert_declarations(self.spec.expert_uids, declared)
            invalid += malformed
        invalid += protocol.num_invalid_records - dropped_before
        return SwarmReading(
            time=clock(),
            peers=sightings,
            experts=experts,
            invalid_records=invalid,
            duration_s=time.monotonic() - started,
        )

    async def ashutdown(self) -> None:
        dht, self.dht = self.dht, None
        if dht is not None:
            await dht.ashutdown()
