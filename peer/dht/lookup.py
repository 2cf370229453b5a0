"""The network driver of `ClosestPeersQuery`: the bulk iterative lookup, run over `dht.find/1`.

`LookupDriver.run` starts the query from the routing table's nearest servers of each key, sends the
requests the query asks for in a task group (at most `alpha` in flight per key; one request names
every key its peer is a candidate for), and feeds the replies, failures and deadlines back in until
every key is finished. With a `RecordReader`, values are checked on the read path as they arrive, so
a forged or malformed value neither reaches the result nor ends a `FIRST_VALUE` search.

Peers named in replies are only remembered with their addresses for the duration of the lookup; a
peer's addresses reach the transport just before it is asked. A peer that fails to answer is failed
for the whole query, dropped from the routing table and banned for a while (`Contacts.on_failure`),
and so is a peer whose request passes its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from peer.dht.config import DHTConfig, get_dht_time
from peer.dht.contacts import Contacts
from peer.dht.protocol import DHTProtocol, FoundValue, PeerAddress
from peer.dht.query import ClosestPeersQuery, QueryMode
from peer.dht.reader import RecordReader, expiration_of
from peer.dht.routing import DHTID, MAX_MADDRS_PER_NODE
from peer.dht.storage import ValueWithExpiration
from peer.net.identity import PeerID
from peer.utils.aio import TaskGroup, timeout

logger = logging.getLogger(__name__)


@dataclass
class LookupOutcome:
    """A finished lookup, and the valid records found per key (with the peer that held each)."""

    query: ClosestPeersQuery
    found: dict[DHTID, list[tuple[PeerID, FoundValue]]] = field(default_factory=lambda: defaultdict(list))

    def nearest(self, key_id: DHTID) -> tuple[PeerID, ...]:
        """The key's nearest peers that answered, closest first."""
        return self.query.result(key_id).nearest


class LookupDriver:
    """Runs the lookups of one node (see the module docstring); counts them in `stats`."""

    def __init__(self, protocol: DHTProtocol, contacts: Contacts, config: DHTConfig):
        self.protocol = protocol
        self.contacts = contacts
        self.config = config
        self.stats = {"lookups": 0, "hops": 0, "requests": 0}

    async def run(
        self,
        key_ids: Sequence[DHTID],
        mode: QueryMode,
        *,
        k: int | None = None,
        reader: RecordReader | None = None,
    ) -> LookupOutcome:
        """One bulk iterative lookup of `key_ids`, converging on the `k` nearest servers of each."""
        loop = asyncio.get_running_loop()
        query = ClosestPeersQuery(
            list(key_ids),
            {key_id: self.contacts.seeds(key_id, self.config.k) for key_id in key_ids},
            now=loop.time(),
            k=k or self.config.k,
            alpha=self.config.alpha,
            mode=mode,
            request_timeout=self.config.request_timeout,
            exclude=[self.contacts.peer_id],
        )
        outcome = LookupOutcome(query)
        learned: dict[PeerID, tuple[str, ...]] = {}  # addresses of peers named in replies
        changed = asyncio.Event()

        async def ask(peer_id: PeerID, request_keys: tuple[DHTID, ...]) -> None:
            maddrs = learned.get(peer_id)
            if maddrs and not self.contacts.register_addresses(peer_id, maddrs):
                query.on_failure(peer_id)  # a responder named it with a malformed address
            else:
                reply = await self.protocol.call_find(peer_id, request_keys)
                if reply is None:
                    if query.on_failure(peer_id):
                        self.contacts.on_failure(peer_id)
                else:
                    self._on_reply(outcome, peer_id, reply, learned, reader)
            changed.set()

        async with TaskGroup() as group:
            tasks = []
            while True:
                step = query.next(loop.time())
                for peer_id in step.timed_out:  # its call may still be dialing: fail it now
                    self.contacts.on_failure(peer_id)
                tasks += [group.create_task(ask(request.peer_id, request.keys)) for request in step.requests]
                if step.finished:
                    break
                changed.clear()
                delay = None if step.wake_at is None else max(0.0, step.wake_at - loop.time())
                try:
                    async with timeout(delay):
                        await changed.wait()
                except TimeoutError:
                    pass
            for task in tasks:
                task.cancel()
        self._count(query, key_ids)
        return outcome

    def _count(self, query: ClosestPeersQuery, key_ids: Sequence[DHTID]) -> None:
        now = time.monotonic()
        for key_id in key_ids:
            self.contacts.routing_table.mark_refreshed(key_id, now)
            self.stats["lookups"] += 1
            self.stats["hops"] += query.result(key_id).hops
        self.stats["requests"] += query.num_requests

    def _on_reply(
        self,
        outcome: LookupOutcome,
        peer_id: PeerID,
        reply: dict[DHTID, FoundValue],
        learned: dict[PeerID, tuple[str, ...]],
        reader: RecordReader | None,
    ) -> None:
        """Feed one find reply to the query: closer peers, and the valid values it holds."""
        now, dht_now = time.monotonic(), get_dht_time()
        closer: dict[DHTID, list[PeerID]] = {}
        offered: dict[DHTID, ValueWithExpiration] = {}
        for key_id, result in reply.items():
            closer[key_id] = self._learn(result.nearest, learned, now)
            if not result.found:
                continue
            valid = result if reader is None else reader.valid_part(key_id, result, dht_now, peer_id)
            if valid is None:
                continue
            outcome.found[key_id].append((peer_id, valid))
            offered[key_id] = ValueWithExpiration(True, expiration_of(valid))
        outcome.query.on_success(peer_id, closer, offered)

    def _learn(
        self, nearest: Sequence[PeerAddress], learned: dict[PeerID, tuple[str, ...]], now: float
    ) -> list[PeerID]:
        """The peers a responder named, minus ourselves and banned peers; their addresses noted."""
        peers = []
        for address in nearest:
            peer_id = address.peer_id
            if peer_id == self.contacts.peer_id or self.contacts.is_banned(peer_id, now):
                continue
            if address.maddrs:
                known = learned.get(peer_id)
                if known is None:
                    learned[peer_id] = address.maddrs
                elif known != address.maddrs:  # keep every address claimed, up to the usual bound
                    merged = dict.fromkeys(known + address.maddrs)
                    learned[peer_id] = tuple(merged)[:MAX_MADDRS_PER_NODE]
            peers.append(peer_id)
        return peers
