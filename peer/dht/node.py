"""`DHTNode`: the async Kademlia driver that ties the pure parts to the network.

It owns a routing table, a storage and a cache, and runs:
- **lookups**: one `ClosestPeersQuery` for many keys at once, driven by `dht.find/1` requests in a
  task group (at most `alpha` in flight per key), with replies and deadlines fed back in;
- **store**: values are signed/wrapped by the validators, then sent to the `num_replicas` nearest
  servers of each key (and kept locally when this node is among them);
- **get**: values found are validated on the read path, merged (the newest expiration wins, per
  subkey for dictionaries), and cached at the nearest server that lacked them;
- **maintenance**: expired values are dropped, stale buckets refreshed, held records republished to
  their current nearest servers, and full buckets' least-recently-seen nodes pinged before eviction.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from peer.dht.blacklist import Blacklist
from peer.dht.protocol import DHTProtocol, FoundValue
from peer.dht.query import ALPHA_VALUE, ClosestPeersQuery, QueryMode
from peer.dht.routing import DHTID, K_VALUE, AddStatus, RoutingTable, serialize_key
from peer.dht.storage import DHTLocalStorage, StorageLimits, ValueWithExpiration
from peer.dht.validation import CompositeValidator, DHTRecord, InvalidRecordError
from peer.errors import DHTError, NetworkError
from peer.net.identity import PeerID
from peer.net.multiaddr import Multiaddr
from peer.net.p2p import P2P
from peer.utils.aio import TaskGroup, timeout

logger = logging.getLogger(__name__)


def get_dht_time() -> float:
    """The DHT's clock: seconds since the epoch. Expiration times are absolute in this clock."""
    return time.time()


@dataclass(frozen=True)
class DHTConfig:
    """Parameters of a DHT node; the defaults suit a public swarm. Durations are in seconds."""

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

    def __post_init__(self) -> None:
        for name in ("num_replicas", "k", "alpha"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("request_timeout", "refresh_period", "republish_period", "maintenance_period"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass
class LookupOutcome:
    query: ClosestPeersQuery
    found: dict[DHTID, list[tuple[PeerID, FoundValue]]]


class DHTNode:
    """One DHT participant on a `P2P`. Create with `await DHTNode.create(...)`."""

    def __init__(self, p2p: P2P, *, config: DHTConfig, validator: CompositeValidator, client_mode: bool):
        self.p2p = p2p
        self.peer_id = p2p.peer_id
        self.node_id = DHTID.from_peer_id(p2p.peer_id)
        self.config = config
        self.validator = validator
        self.client_mode = client_mode
        self.routing_table = RoutingTable(self.node_id, k=config.k, now=time.monotonic())
        self.storage = DHTLocalStorage(config.storage_limits)
        self.cache = DHTLocalStorage(config.storage_limits, evict_when_full=True)
        self.blacklist = Blacklist()
        self.key_bytes: dict[DHTID, bytes] = {}  # serialized keys of what we hold, for republishing
        self.protocol = DHTProtocol(
            p2p,
            routing_table=self.routing_table,
            storage=self.storage,
            cache=self.cache,
            validator=validator,
            client_mode=client_mode,
            request_timeout=config.request_timeout,
            clock=get_dht_time,
            on_contact=self._on_contact,
            key_bytes=self.key_bytes,
        )
        self._pinging: set[PeerID] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._group: TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.stats = {"lookups": 0, "hops": 0, "requests": 0}

    @classmethod
    async def create(
        cls,
        p2p: P2P,
        *,
        initial_peers: Sequence[str | Multiaddr] = (),
        config: DHTConfig | None = None,
        validator: CompositeValidator | None = None,
        client_mode: bool = False,
    ) -> DHTNode:
        node = cls(
            p2p,
            config=config or DHTConfig(),
            validator=validator or CompositeValidator(),
            client_mode=client_mode,
        )
        started = asyncio.Event()
        node._runner = asyncio.get_running_loop().create_task(node._run(started))
        await started.wait()
        if initial_peers:
            try:
                await node.bootstrap(initial_peers)
            except BaseException:
                await node.shutdown()
                raise
        return node

    # ---- contacts and the routing table --------------------------------------------------------

    def _on_contact(self, peer_id: PeerID, maddrs: Sequence[str], is_server: bool) -> None:
        if peer_id == self.peer_id:
            return
        if maddrs:
            try:
                self.p2p.add_addresses(peer_id, maddrs)
            except ValueError:
                maddrs = ()
        try:
            result = self.routing_table.add_or_update(
                peer_id, tuple(maddrs), time.monotonic(), is_server=is_server
            )
        except (ValueError, TypeError):
            return
        self.blacklist.register_success(peer_id)
        if result.status is AddStatus.PENDING and result.to_ping is not None:
            lrs = result.to_ping.peer_id
            if lrs not in self._pinging and self._group is not None:
                self._pinging.add(lrs)
                self._spawn(self._ping_lrs(lrs))

    async def _ping_lrs(self, peer_id: PeerID) -> None:
        try:
            alive = await self.protocol.call_ping(peer_id)
            if alive:
                self.routing_table.on_ping_success(peer_id, time.monotonic())
            else:
                self.routing_table.on_ping_failure(peer_id)
        finally:
            self._pinging.discard(peer_id)

    def _on_failure(self, peer_id: PeerID) -> None:
        self.blacklist.register_failure(peer_id, time.monotonic())
        self.routing_table.remove(peer_id)

    async def bootstrap(self, initial_peers: Sequence[str | Multiaddr]) -> None:
        """Join through `initial_peers` (multiaddrs); DHTError naming each address if none answers."""
        attempts: dict[str, str] = {}
        joined = 0
        for maddr in initial_peers:
            try:
                peer_id = await self.p2p.connect(maddr)
            except (NetworkError, ValueError) as e:
                attempts[str(maddr)] = str(e)
                continue
            if await self.protocol.call_ping(peer_id):
                joined += 1
            else:
                attempts[str(maddr)] = "connected, but it does not serve the DHT (a client-mode peer?)"
        if not joined:
            tried = "; ".join(f"{maddr}: {why}" for maddr, why in attempts.items()) or "no addresses given"
            raise DHTError(f"could not join the DHT through any initial peer ({tried})")
        await self.find_nearest([self.node_id])  # fill the table with our neighbourhood

    # ---- lookups -------------------------------------------------------------------------------

    async def _lookup(self, key_ids: Sequence[DHTID], mode: QueryMode) -> LookupOutcome:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        banned = [node.peer_id for node in self.routing_table if self.blacklist.is_banned(node.peer_id, now)]
        seeds = {
            key_id: [node.peer_id for node in self.routing_table.nearest(key_id, self.config.k)]
            for key_id in key_ids
        }
        query = ClosestPeersQuery(
            list(key_ids),
            seeds,
            now=loop.time(),
            k=self.config.k,
            alpha=self.config.alpha,
            mode=mode,
            request_timeout=self.config.request_timeout,
            exclude=[self.peer_id, *banned],
        )
        found: dict[DHTID, list[tuple[PeerID, FoundValue]]] = defaultdict(list)
        changed = asyncio.Event()

        async def ask(peer_id: PeerID, keys: tuple[DHTID, ...]) -> None:
            reply = await self.protocol.call_find(peer_id, keys)
            if reply is None:
                if query.on_failure(peer_id):
                    self._on_failure(peer_id)
            else:
                closer: dict[DHTID, list[PeerID]] = {}
                offered: dict[DHTID, ValueWithExpiration] = {}
                for key_id, result in reply.items():
                    closer[key_id] = self._learn_nearest(result)
                    if result.found:
                        found[key_id].append((peer_id, result))
                        offered[key_id] = ValueWithExpiration(True, _expiration_of(result))
                query.on_success(peer_id, closer, offered)
            changed.set()

        async with TaskGroup() as group:
            tasks = []
            while True:
                step = query.next(loop.time())
                for request in step.requests:
                    tasks.append(group.create_task(ask(request.peer_id, request.keys)))
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
        for key_id in key_ids:
            self.routing_table.mark_refreshed(key_id, time.monotonic())
            result = query.result(key_id)
            self.stats["lookups"] += 1
            self.stats["hops"] += result.hops
        self.stats["requests"] += query.num_requests
        return LookupOutcome(query, found)

    def _learn_nearest(self, result: FoundValue) -> list[PeerID]:
        peers = []
        for address in result.nearest:
            if address.peer_id == self.peer_id:
                continue
            if address.maddrs:
                try:
                    self.p2p.add_addresses(address.peer_id, address.maddrs)
                except ValueError:
                    continue
            peers.append(address.peer_id)
        return peers

    async def find_nearest(self, key_ids: Sequence[DHTID]) -> dict[DHTID, tuple[PeerID, ...]]:
        """The k nearest live servers of each key id, closest first."""
        outcome = await self._lookup(key_ids, QueryMode.CLOSEST)
        return {key_id: outcome.query.result(key_id).nearest for key_id in key_ids}

    # ---- store ---------------------------------------------------------------------------------

    def make_record(self, key: object, subkey: object, value: object, expiration_time: float) -> DHTRecord:
        """A wrapped (signed, if owned) record for a Python key, subkey and msgpack-able value."""
        try:
            packed = msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError) as e:
            raise TypeError(f"a DHT value must be msgpack-serializable: {e}") from None
        record = DHTRecord.create(key, subkey, packed, expiration_time)
        wrapped = DHTRecord(record.key, record.subkey, self.validator.sign(record), record.expiration_time)
        self.validator.check_store(wrapped)  # a schema violation is the caller's error, said at once
        return wrapped

    async def store_records(self, records: Sequence[DHTRecord]) -> list[bool]:
        """Send each record to the `num_replicas` nearest servers of its key; True where any took it."""
        key_ids = [DHTID.from_key_bytes(record.key) for record in records]
        nearest = await self.find_nearest(list(dict.fromkeys(key_ids)))
        stored = [False] * len(records)
        per_peer: dict[PeerID, list[int]] = defaultdict(list)
        now = get_dht_time()
        for index, (record, key_id) in enumerate(zip(records, key_ids, strict=False)):
            replicas = nearest[key_id][: self.config.num_replicas]
            if self._should_hold(key_id, replicas):
                status = self.storage.store(key_id, record.value, record.expiration_time, now, record.subkey)
                if status:
                    self.key_bytes[key_id] = record.key
                    stored[index] = True
            for peer_id in replicas:
                per_peer[peer_id].append(index)

        async def send(peer_id: PeerID, indices: list[int]) -> None:
            outcome = await self.protocol.call_store(peer_id, [records[i] for i in indices])
            if outcome is None:
                self._on_failure(peer_id)
                return
            for index, ok in zip(indices, outcome, strict=False):
                stored[index] = stored[index] or ok

        async with TaskGroup() as group:
            for peer_id, indices in per_peer.items():
                group.create_task(send(peer_id, indices))
        return stored

    def _should_hold(self, key_id: DHTID, replicas: Sequence[PeerID]) -> bool:
        if self.client_mode:
            return False
        if len(replicas) < self.config.num_replicas:
            return True
        farthest = DHTID.from_peer_id(replicas[-1]).xor_distance(key_id)
        return self.node_id.xor_distance(key_id) < farthest

    # ---- get -----------------------------------------------------------------------------------

    async def get_many(
        self, keys: Sequence[object], latest: bool = False
    ) -> dict[object, ValueWithExpiration | None]:
        """Find each key's value: validated, merged across replicas, unpacked; None where absent."""
        serialized = {key: serialize_key(key) for key in keys}
        key_ids = {key: DHTID.from_key_bytes(data) for key, data in serialized.items()}
        mode = QueryMode.LATEST if latest else QueryMode.FIRST_VALUE
        outcome = await self._lookup(list(dict.fromkeys(key_ids.values())), mode)
        now = get_dht_time()
        results: dict[object, ValueWithExpiration | None] = {}
        for key in keys:
            key_id = key_ids[key]
            candidates = list(outcome.found.get(key_id, ()))
            local = self._local_value(key_id, now)
            if local is not None:
                candidates.append((self.peer_id, local))
            results[key] = self._merge(serialized[key], candidates, now)
            if self.config.cache_values and results[key] is not None and self._group is not None:
                self._cache_near(outcome, key_id, serialized[key], candidates, now)
        return results

    def _local_value(self, key_id: DHTID, now: float) -> FoundValue | None:
        stored = DHTProtocol._latest(self.storage.get(key_id, now), self.cache.get(key_id, now))
        if stored is None:
            return None
        if isinstance(stored.value, dict):
            return FoundValue(None, stored.value, ())
        return FoundValue(stored, None, ())

    def _merge(
        self, key: bytes, candidates: Iterable[tuple[PeerID, FoundValue]], now: float
    ) -> ValueWithExpiration | None:
        """The newest valid plain value, or the merged dictionary (newest per subkey), unpacked."""
        best: ValueWithExpiration | None = None
        merged: dict[bytes, ValueWithExpiration] = {}
        for peer_id, found in candidates:
            if found.value is not None:
                item = self._checked(key, None, found.value, now, peer_id)
                if item is not None and (best is None or item.expiration_time > best.expiration_time):
                    best = item
            for subkey, wrapped in (found.dictionary or {}).items():
                item = self._checked(key, subkey, wrapped, now, peer_id)
                if item is not None and (
                    subkey not in merged or item.expiration_time > merged[subkey].expiration_time
                ):
                    merged[subkey] = item
        dict_expiration = max((item.expiration_time for item in merged.values()), default=None)
        if best is not None and (dict_expiration is None or best.expiration_time > dict_expiration):
            return best
        if merged and dict_expiration is not None:
            value = {_unpack(subkey): item for subkey, item in merged.items()}
            return ValueWithExpiration(value, dict_expiration)
        return None

    def _checked(
        self, key: bytes, subkey: bytes | None, item: ValueWithExpiration[bytes], now: float, source: PeerID
    ) -> ValueWithExpiration | None:
        """The unpacked value if the record is unexpired and valid; None (and counted) if not."""
        if item.expiration_time <= now:
            return None
        try:
            plain = self.validator.check_read(DHTRecord(key, subkey, item.value, item.expiration_time))
            if subkey is not None:
                _unpack(subkey)
            return ValueWithExpiration(_unpack(plain), item.expiration_time)
        except (InvalidRecordError, DHTError, TypeError, ValueError) as e:
            self.protocol.num_invalid_records += 1
            logger.info("dropped an invalid DHT record from %s: %s", source, e)
            return None

    def _cache_near(
        self,
        outcome: LookupOutcome,
        key_id: DHTID,
        key: bytes,
        candidates: list[tuple[PeerID, FoundValue]],
        now: float,
    ) -> None:
        best = max(
            (found.value for _, found in candidates if found.value is not None),
            key=lambda item: item.expiration_time,
            default=None,
        )
        if best is None:
            return
        holders = {peer_id for peer_id, _ in candidates}
        lacking = [peer_id for peer_id in outcome.query.result(key_id).nearest if peer_id not in holders]
        if lacking:
            record = DHTRecord(key, None, best.value, best.expiration_time)
            self._spawn(self.protocol.call_store(lacking[0], [record], in_cache=True))

    # ---- maintenance ---------------------------------------------------------------------------

    async def _run(self, started: asyncio.Event) -> None:
        async with TaskGroup() as group:
            self._group = group
            started.set()
            self._spawn(self._maintain())
            await self._stopping.wait()
            self._group = None
            for task in list(self._tasks):
                task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background task owned by this node's task group (cancelled on shutdown)."""
        if self._group is None:
            coro.close()
            return
        task = self._group.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _maintain(self) -> None:
        last_republish = time.monotonic()
        while True:
            await asyncio.sleep(self.config.maintenance_period * random.uniform(0.8, 1.2))
            try:
                now = get_dht_time()
                self.storage.remove_expired(now)
                self.cache.remove_expired(now)
                await self.refresh_buckets()
                if time.monotonic() - last_republish >= self.config.republish_period:
                    last_republish = time.monotonic()
                    await self.republish()
            except (NetworkError, DHTError) as e:
                logger.info("DHT maintenance of %s failed this round: %s", self.peer_id.short(), e)

    async def refresh_buckets(self) -> None:
        stale = self.routing_table.buckets_to_refresh(time.monotonic(), self.config.refresh_period)
        if stale and len(self.routing_table):
            await self.find_nearest([bucket.random_id() for bucket in stale])

    async def republish(self) -> int:
        """Push every record we hold to its key's current nearest servers; returns how many."""
        now = get_dht_time()
        records = []
        for key_id, stored in self.storage.items(now):
            key = self.key_bytes.get(key_id)
            if key is None:
                continue
            if isinstance(stored.value, dict):
                records += [
                    DHTRecord(key, sub, item.value, item.expiration_time)
                    for sub, item in stored.value.items()
                ]
            else:
                records.append(DHTRecord(key, None, stored.value, stored.expiration_time))
        for key_id in [key_id for key_id in self.key_bytes if self.storage.get(key_id, now) is None]:
            del self.key_bytes[key_id]
        if records:
            await self.store_records(records)
        return len(records)

    async def shutdown(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner


def _expiration_of(found: FoundValue) -> float:
    if found.value is not None:
        return found.value.expiration_time
    return max((item.expiration_time for item in (found.dictionary or {}).values()), default=0.0)


def _unpack(data: bytes) -> object:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise DHTError(f"a DHT value is not valid msgpack: {e}") from None
