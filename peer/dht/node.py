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

KNOWN_ADDRESSES_LIMIT = 16384
TRIM_GRACE = 1.0


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
    max_connections: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_replicas", "k", "alpha"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1, or None for no limit")
        for name in ("request_timeout", "refresh_period", "republish_period", "maintenance_period"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


# read-path verdicts of one get, by (subkey, wrapped value, expiration): each record is checked once
Verdicts = dict[tuple[bytes | None, bytes, float], ValueWithExpiration | None]


@dataclass
class LookupOutcome:
    """A finished lookup, and the valid records found per key (with the peer that held each)."""

    query: ClosestPeersQuery
    found: dict[DHTID, list[tuple[PeerID, FoundValue]]]
    verdicts: Verdicts


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
            after_call=self._trim_connections if config.max_connections is not None else None,
        )
        self._known_addresses: dict[PeerID, tuple[str, ...]] = {}  # last told to the address book
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
        if maddrs and not self._remember_addresses(peer_id, maddrs):
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

    def _remember_addresses(self, peer_id: PeerID, maddrs: Sequence[str]) -> bool:
        """Tell the transport where `peer_id` listens (parsing only addresses new to us); False if invalid."""
        maddrs = tuple(maddrs)
        if self._known_addresses.get(peer_id) == maddrs:
            return True
        try:
            self.p2p.add_addresses(peer_id, maddrs)
        except ValueError:
            return False
        if len(self._known_addresses) >= KNOWN_ADDRESSES_LIMIT:
            self._known_addresses.clear()
        self._known_addresses[peer_id] = maddrs
        return True

    def _trim_connections(self) -> None:
        """Keep at most `config.max_connections` connections (a remote that reuses one at the instant
        it closes gets its call retried once on a new connection)."""
        if self.config.max_connections is not None:
            self.p2p.pool.trim(self.config.max_connections, TRIM_GRACE)

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

    async def _lookup(
        self,
        key_ids: Sequence[DHTID],
        mode: QueryMode,
        *,
        k: int | None = None,
        keys: dict[DHTID, bytes] | None = None,
        verdicts: Verdicts | None = None,
    ) -> LookupOutcome:
        """One bulk iterative lookup of `key_ids`, converging on the `k` nearest servers of each.

        With `keys` (key id -> serialized key), values found are checked on the read path as they
        arrive, so a forged or malformed value never ends a `FIRST_VALUE` search: only valid records
        reach `outcome.found`.
        """
        loop = asyncio.get_running_loop()
        verdicts = {} if verdicts is None else verdicts
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
            k=k or self.config.k,
            alpha=self.config.alpha,
            mode=mode,
            request_timeout=self.config.request_timeout,
            exclude=[self.peer_id, *banned],
        )
        outcome = LookupOutcome(query, defaultdict(list), verdicts)
        changed = asyncio.Event()

        async def ask(peer_id: PeerID, request_keys: tuple[DHTID, ...]) -> None:
            reply = await self.protocol.call_find(peer_id, request_keys)
            if reply is None:
                if query.on_failure(peer_id):
                    self._on_failure(peer_id)
            else:
                self._on_reply(outcome, peer_id, reply, keys)
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
        now = time.monotonic()
        for key_id in key_ids:
            self.routing_table.mark_refreshed(key_id, now)
            self.stats["lookups"] += 1
            self.stats["hops"] += query.result(key_id).hops
        self.stats["requests"] += query.num_requests
        return outcome

    def _on_reply(
        self,
        outcome: LookupOutcome,
        peer_id: PeerID,
        reply: dict[DHTID, FoundValue],
        keys: dict[DHTID, bytes] | None,
    ) -> None:
        """Feed one find reply to the query: closer peers, and the valid values it holds."""
        now, dht_now = time.monotonic(), get_dht_time()
        closer: dict[DHTID, list[PeerID]] = {}
        offered: dict[DHTID, ValueWithExpiration] = {}
        for key_id, result in reply.items():
            closer[key_id] = self._learn_nearest(result, now)
            if not result.found:
                continue
            valid: FoundValue | None = result
            if keys is not None:
                valid = self._valid_part(keys[key_id], result, dht_now, peer_id, outcome.verdicts)
            if valid is None:
                continue
            outcome.found[key_id].append((peer_id, valid))
            offered[key_id] = ValueWithExpiration(True, _expiration_of(valid))
        outcome.query.on_success(peer_id, closer, offered)

    def _learn_nearest(self, result: FoundValue, now: float) -> list[PeerID]:
        """The peers a responder named as nearest, minus ourselves, banned peers and bad addresses."""
        peers = []
        for address in result.nearest:
            if address.peer_id == self.peer_id or self.blacklist.is_banned(address.peer_id, now):
                continue
            if address.maddrs and not self._remember_addresses(address.peer_id, address.maddrs):
                continue
            peers.append(address.peer_id)
        return peers

    async def find_nearest(
        self, key_ids: Sequence[DHTID], k: int | None = None
    ) -> dict[DHTID, tuple[PeerID, ...]]:
        """The `k` (default: `config.k`) nearest live servers of each key id, closest first."""
        outcome = await self._lookup(key_ids, QueryMode.CLOSEST, k=k)
        return {key_id: outcome.query.result(key_id).nearest for key_id in key_ids}

    # ---- store ---------------------------------------------------------------------------------

    def make_record(self, key: object, subkey: object, value: object, expiration_time: float) -> DHTRecord:
        """A wrapped (signed, if owned) record for a Python key, subkey and msgpack-able value.

        Raises ValueError for a value larger than this node's `storage_limits.max_value_size` (the
        other nodes would refuse it too) and `InvalidRecordError` for one our validators refuse.
        """
        try:
            packed = msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError) as e:
            raise TypeError(f"a DHT value must be msgpack-serializable: {e}") from None
        record = DHTRecord.create(key, subkey, packed, expiration_time)
        wrapped = DHTRecord(record.key, record.subkey, self.validator.sign(record), record.expiration_time)
        limits = self.config.storage_limits
        if len(wrapped.value) > limits.max_value_size:
            raise ValueError(
                f"value is {len(wrapped.value)} bytes once serialized (and signed); the DHT stores at "
                f"most {limits.max_value_size} bytes per value (StorageLimits.max_value_size)"
            )
        if wrapped.subkey is not None and len(wrapped.subkey) > limits.max_subkey_size:
            raise ValueError(
                f"subkey is {len(wrapped.subkey)} bytes once serialized; the DHT accepts at most "
                f"{limits.max_subkey_size} (StorageLimits.max_subkey_size)"
            )
        self.validator.check_store(wrapped)  # a schema violation is the caller's error, said at once
        return wrapped

    async def store_records(self, records: Sequence[DHTRecord]) -> list[bool]:
        """Send each record to the `num_replicas` nearest servers of its key; True where any took it."""
        key_ids = [DHTID.from_key_bytes(record.key) for record in records]
        nearest = await self.find_nearest(list(dict.fromkeys(key_ids)), k=self.config.num_replicas)
        stored = [False] * len(records)
        per_peer: dict[PeerID, list[int]] = defaultdict(list)
        now = get_dht_time()
        for index, (record, key_id) in enumerate(zip(records, key_ids, strict=True)):
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
            for index, ok in zip(indices, outcome, strict=True):
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
        """Find each key's value: validated, merged across replicas, unpacked; None where absent.

        Without `latest`, a key held locally (stored or cached) is answered without a lookup, and the
        lookup of the others stops at the first valid value. With `latest`, every key is looked up
        until its `num_replicas` nearest live servers answered, and the newest value wins.
        """
        serialized = {key: serialize_key(key) for key in keys}
        key_ids = {key: DHTID.from_key_bytes(data) for key, data in serialized.items()}
        by_id = {key_id: serialized[key] for key, key_id in key_ids.items()}
        verdicts: Verdicts = {}
        now = get_dht_time()
        local = {key_id: self._local_value(key_id, now) for key_id in by_id}
        to_search = [
            key_id
            for key_id, data in by_id.items()
            if latest or self._merge(data, [(self.peer_id, local[key_id])], now, verdicts) is None
        ]
        outcome, searched = None, set(to_search)
        if to_search:
            mode = QueryMode.LATEST if latest else QueryMode.FIRST_VALUE
            outcome = await self._lookup(
                to_search, mode, k=self.config.num_replicas, keys=by_id, verdicts=verdicts
            )
        now = get_dht_time()
        results: dict[object, ValueWithExpiration | None] = {}
        for key in keys:
            key_id = key_ids[key]
            candidates = list(outcome.found.get(key_id, ())) if outcome is not None else []
            candidates.append((self.peer_id, local[key_id]))
            results[key] = self._merge(serialized[key], candidates, now, verdicts)
            if self.config.cache_values and results[key] is not None and outcome and key_id in searched:
                self._cache_near(outcome, key_id, serialized[key], candidates)
        return results

    def _local_value(self, key_id: DHTID, now: float) -> FoundValue:
        stored = DHTProtocol._latest(self.storage.get(key_id, now), self.cache.get(key_id, now))
        if stored is None:
            return FoundValue(None, None, ())
        if isinstance(stored.value, dict):
            return FoundValue(None, stored.value, ())
        return FoundValue(stored, None, ())

    def _valid_part(
        self, key: bytes, found: FoundValue, now: float, source: PeerID, verdicts: Verdicts
    ) -> FoundValue | None:
        """`found` without the records that fail the read path; None if none is left."""
        value = found.value
        if value is not None and self._checked(key, None, value, now, source, verdicts) is None:
            value = None
        dictionary = {
            subkey: item
            for subkey, item in (found.dictionary or {}).items()
            if self._checked(key, subkey, item, now, source, verdicts) is not None
        }
        if value is None and not dictionary:
            return None
        return FoundValue(value, dictionary or None, found.nearest)

    def _merge(
        self, key: bytes, candidates: Iterable[tuple[PeerID, FoundValue]], now: float, verdicts: Verdicts
    ) -> ValueWithExpiration | None:
        """The newest valid plain value, or the merged dictionary (newest per subkey), unpacked."""
        best: ValueWithExpiration | None = None
        merged: dict[bytes, ValueWithExpiration] = {}
        for peer_id, found in candidates:
            if found.value is not None:
                item = self._checked(key, None, found.value, now, peer_id, verdicts)
                if item is not None and (best is None or item.expiration_time > best.expiration_time):
                    best = item
            for subkey, wrapped in (found.dictionary or {}).items():
                item = self._checked(key, subkey, wrapped, now, peer_id, verdicts)
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
        self,
        key: bytes,
        subkey: bytes | None,
        item: ValueWithExpiration[bytes],
        now: float,
        source: PeerID,
        verdicts: Verdicts,
    ) -> ValueWithExpiration | None:
        """The unpacked value if the record is unexpired and valid; None (and counted) if not.

        Each distinct record is checked once per get (`verdicts`), however many replicas hold it.
        """
        if item.expiration_time <= now:
            return None
        memo_key = (subkey, item.value, item.expiration_time)
        if memo_key in verdicts:
            return verdicts[memo_key]
        verdict: ValueWithExpiration | None = None
        try:
            plain = self.validator.check_read(DHTRecord(key, subkey, item.value, item.expiration_time))
            if subkey is not None:
                _unpack(subkey)
            verdict = ValueWithExpiration(_unpack(plain), item.expiration_time)
        except (InvalidRecordError, DHTError, TypeError, ValueError) as e:
            self.protocol.num_invalid_records += 1
            logger.info("dropped an invalid DHT record from %s: %s", source, e)
        verdicts[memo_key] = verdict
        return verdict

    def _cache_near(
        self,
        outcome: LookupOutcome,
        key_id: DHTID,
        key: bytes,
        candidates: list[tuple[PeerID, FoundValue]],
    ) -> None:
        """Cache the newest valid plain value at the nearest server on the path that lacked it."""
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
        task = self._group.create_task(self._logged(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _logged(self, coro: Coroutine[Any, Any, Any]) -> None:
        """A background task's boundary: its failure is logged and never takes the node down."""
        try:
            await coro
        except Exception:
            logger.exception("a background task of DHT node %s failed", self.peer_id.short())

    async def _maintain(self) -> None:
        last_republish = time.monotonic()
        while True:
            await asyncio.sleep(self.config.maintenance_period * random.uniform(0.8, 1.2))
            try:
                now = get_dht_time()
                self.storage.remove_expired(now)
                self.cache.remove_expired(now)
                self.blacklist.prune(time.monotonic())
                await self.refresh_buckets()
                if time.monotonic() - last_republish >= self.config.republish_period:
                    last_republish = time.monotonic()
                    await self.republish()
            except Exception:  # the boundary: a bad round is logged, the next one runs
                logger.exception("DHT maintenance of %s failed this round", self.peer_id.short())

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
