"""What a DHT node knows about other peers: its routing table, its bans, and their addresses.

`Contacts` is fed from two sides:
- the protocol reports every peer that sent us a request or answered ours (`on_contact`), with the
  addresses it announced and whether it is a server. Servers enter the routing table; client-mode
  peers never do. A peer that falls into a full bucket waits in the bucket's replacement cache while
  the bucket's least-recently-seen node is pinged: if that node answers it stays, if not it is evicted
  and the newest replacement takes its place (ping before evict);
- lookups and stores report peers that failed to answer (`on_failure`): they leave the routing table
  and are banned with exponential backoff (`Blacklist`), so lookups skip them for a while.

Addresses are handed to the transport's address book lazily: a lookup learns about dozens of peers
per reply but asks only a few of them, so it registers a peer's addresses just before asking it
(`register_addresses`), and parses each peer's addresses only once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from peer.dht.blacklist import Blacklist
from peer.dht.routing import DHTID, AddStatus, RoutingTable
from peer.net.identity import PeerID
from peer.net.p2p import P2P

logger = logging.getLogger(__name__)

REGISTERED_ADDRESSES_LIMIT = 16384

Ping = Callable[[PeerID], Awaitable[bool]]
Spawn = Callable[[Coroutine[Any, Any, Any]], None]


class Contacts:
    """The routing table, bans and address registrations of one node (see the module docstring).

    `ping` asks a peer whether it is alive (the protocol's `call_ping`); `spawn` runs a background
    task owned by the node.
    """

    def __init__(self, p2p: P2P, *, k: int, ping: Ping, spawn: Spawn):
        self.p2p = p2p
        self.peer_id = p2p.peer_id
        self.routing_table = RoutingTable(DHTID.from_peer_id(p2p.peer_id), k=k, now=time.monotonic())
        self.blacklist = Blacklist()
        self._ping = ping
        self._spawn = spawn
        self._registered: dict[PeerID, tuple[str, ...]] = {}  # last given to the transport, per peer
        self._pinging: set[PeerID] = set()

    def on_contact(self, peer_id: PeerID, maddrs: Sequence[str], is_server: bool) -> None:
        """`peer_id` sent us a request or answered ours, announcing `maddrs`."""
        if peer_id == self.peer_id:
            return
        if maddrs and not self.register_addresses(peer_id, maddrs):
            maddrs = ()
        try:
            result = self.routing_table.add_or_update(
                peer_id, tuple(maddrs), time.monotonic(), is_server=is_server
            )
        except (ValueError, TypeError):
            return
        self.blacklist.register_success(peer_id)
        if result.status is AddStatus.PENDING and result.to_ping is not None:
            least_recently_seen = result.to_ping.peer_id
            if least_recently_seen not in self._pinging:
                self._pinging.add(least_recently_seen)
                self._spawn(self._ping_before_evicting(least_recently_seen))

    def on_failure(self, peer_id: PeerID) -> None:
        """`peer_id` did not answer: forget it (a replacement takes its place) and ban it for a while."""
        self.blacklist.register_failure(peer_id, time.monotonic())
        self.routing_table.remove(peer_id)

    def is_banned(self, peer_id: PeerID, now: float | None = None) -> bool:
        return self.blacklist.is_banned(peer_id, time.monotonic() if now is None else now)

    def seeds(self, key_id: DHTID, k: int) -> list[PeerID]:
        """The `k` known servers closest to `key_id` that are not banned: where a lookup starts."""
        now = time.monotonic()
        return [
            node.peer_id
            for node in self.routing_table.nearest(key_id, k)
            if not self.blacklist.is_banned(node.peer_id, now)
        ]

    def register_addresses(self, peer_id: PeerID, maddrs: Sequence[str]) -> bool:
        """Tell the transport where `peer_id` listens (once per address list); False if one is invalid."""
        maddrs = tuple(maddrs)
        if self._registered.get(peer_id) == maddrs:
            return True
        try:
            self.p2p.add_addresses(peer_id, maddrs)
        except ValueError:
            return False
        if len(self._registered) >= REGISTERED_ADDRESSES_LIMIT:
            self._registered.clear()
        self._registered[peer_id] = maddrs
        return True

    async def _ping_before_evicting(self, peer_id: PeerID) -> None:
        try:
            if await self._ping(peer_id):
                self.routing_table.on_ping_success(peer_id, time.monotonic())
            else:
                logger.debug("evicting %s from the routing table: it did not answer a ping", peer_id)
                self.blacklist.register_failure(peer_id, time.monotonic())
                self.routing_table.on_ping_failure(peer_id)
        finally:
            self._pinging.discard(peer_id)
