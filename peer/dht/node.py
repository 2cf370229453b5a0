"""`DHTNode`: one DHT participant, tying the pure parts to the network.

It composes the layers of `peer.dht`: `Contacts` (routing table, bans, addresses), `DHTProtocol`
(the RPCs), `NodeRecords` (store and cache), `LookupDriver` (bulk iterative lookups) and the jobs
(maintenance), and implements the operations on top of them:
- **join** (`bootstrap`): ping the initial peers, look up our own id, refresh every other bucket;
- **store**: values are signed/wrapped by the validators, then sent to the `num_replicas` nearest
  servers of each key (and kept locally when this node is among them);
- **get**: values found are validated on the read path, merged (the newest expiration wins, per
  subkey for dictionaries), and cached at the nearest peer on the lookup path that lacked them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Coroutine, Sequence
from typing import Any

import msgpack

from peer.dht import jobs
from peer.dht.blacklist import Blacklist
from peer.dht.caching import plan_caching
from peer.dht.config import DHTConfig, get_dht_time
from peer.dht.contacts import Contacts
from peer.dht.lookup import LookupDriver, LookupOutcome
from peer.dht.protocol import DHTProtocol, FoundValue
from peer.dht.query import QueryMode
from peer.dht.reader import Merged, RecordReader
from peer.dht.routing import DHTID, RoutingTable, serialize_key
from peer.dht.storage import DHTLocalStorage, NodeRecords, ValueWithExpiration
from peer.dht.validation import CompositeValidator, DHTRecord
from peer.errors import DHTError, NetworkError
from peer.net.identity import PeerID
from peer.net.multiaddr import Multiaddr
from peer.net.p2p import P2P
from peer.utils.aio import TaskGroup

__all__ = ["DHTConfig", "DHTNode", "get_dht_time"]

logger = logging.getLogger(__name__)

TRIM_GRACE = 1.0  # seconds a connection must be idle before the connection limit may close it


class DHTNode:
    """One DHT participant on a `P2P`. Create with `await DHTNode.create(...)`."""

    def __init__(self, p2p: P2P, *, config: DHTConfig, validator: CompositeValidator, client_mode: bool):
        self.p2p = p2p
        self.peer_id = p2p.peer_id
        self.node_id = DHTID.from_peer_id(p2p.peer_id)
        self.config = config
        self.validator = validator
        self.client_mode = client_mode
        self.records = NodeRecords(config.storage_limits)
        self.contacts = Contacts(p2p, k=config.k, ping=self._ping, spawn=self._spawn)
        self.protocol = DHTProtocol(
            p2p,
            routing_table=self.contacts.routing_table,
            records=self.records,
            validator=validator,
            client_mode=client_mode,
            request_timeout=config.request_timeout,
            on_contact=self.contacts.on_contact,
            after_call=self._trim_connections if config.max_connections is not None else None,
        )
        self.lookups = LookupDriver(self.protocol, self.contacts, config)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._group: TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

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

    # ---- what the node holds and knows, by their usual names -----------------------------------

    @property
    def routing_table(self) -> RoutingTable:
        return self.contacts.routing_table

    @property
    def blacklist(self) -> Blacklist:
        return self.contacts.blacklist

    @property
    def storage(self) -> DHTLocalStorage:
        """The records this node stores as a replica."""
        return self.records.storage

    @property
    def cache(self) -> DHTLocalStorage:
        """The values readers cached near this node."""
        return self.records.cache

    @property
    def stats(self) -> dict[str, int]:
        """Counters of this node's lookups: "lookups" (keys looked up), "hops", "requests"."""
        return self.lookups.stats

    # ---- joining -------------------------------------------------------------------------------

    async def bootstrap(self, initial_peers: Sequence[str | Multiaddr]) -> None:
        """Join through `initial_peers` (multiaddrs); DHTError naming each address if none answers.

        Then look up our own id (our neighbours learn about us, we about them) and refresh every other
        bucket, so that the routing table covers the whole id space. The refresh looks up the
        `num_replicas` nearest servers of a random id in each bucket rather than `k`: that fills the
        table about as well for a fraction of the requests, and the periodic refresh completes it.
        """
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
        await self.find_nearest([self.node_id])
        await jobs.refresh_buckets(self, everything=True, k=self.config.num_replicas)

    async def find_nearest(
        self, key_ids: Sequence[DHTID], k: int | None = None
    ) -> dict[DHTID, tuple[PeerID, ...]]:
        """The `k` (default: `config.k`) nearest live servers of each key id, closest first."""
        outcome = await self.lookups.run(key_ids, QueryMode.CLOSEST, k=k)
        return {key_id: outcome.nearest(key_id) for key_id in key_ids}

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
                stored[index] = bool(
                    self.records.store(record.key, record.value, record.expiration_time, now, record.subkey)
                )
            for peer_id in replicas:
                per_peer[peer_id].append(index)

        async def send(peer_id: PeerID, indices: list[int]) -> None:
            outcome = await self.protocol.call_store(peer_id, [records[i] for i in indices])
            if outcome is None:
                self.contacts.on_failure(peer_id)
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
        by_id = {key_ids[key]: data for key, data in serialized.items()}
        reader = RecordReader(self.validator, by_id, self.protocol.count_invalid)
        now = get_dht_time()
        local = {key_id: self._local_value(key_id, now) for key_id in reader.keys}
        to_search = [
            key_id
            for key_id in reader.keys
            if latest or reader.merge(key_id, [(self.peer_id, local[key_id])], now).value is None
        ]
        outcome = None
        if to_search:
            mode = QueryMode.LATEST if latest else QueryMode.FIRST_VALUE
            outcome = await self.lookups.run(to_search, mode, k=self.config.num_replicas, reader=reader)
        now = get_dht_time()
        merged: dict[DHTID, Merged] = {}
        for key_id in reader.keys:
            candidates = list(outcome.found.get(key_id, ())) if outcome is not None else []
            candidates.append((self.peer_id, local[key_id]))
            merged[key_id] = reader.merge(key_id, candidates, now)
        if outcome is not None and self.config.cache_values:
            self._cache_near(outcome, {key_id: (reader.keys[key_id], merged[key_id]) for key_id in to_search})
        return {key: merged[key_ids[key]].value for key in keys}

    def _local_value(self, key_id: DHTID, now: float) -> FoundValue:
        held = self.records.latest(key_id, now)
        if held is None:
            return FoundValue(None, None, ())
        if isinstance(held.value, dict):
            return FoundValue(None, held.value, ())
        return FoundValue(held, None, ())  # type: ignore[arg-type]

    def _cache_near(self, outcome: LookupOutcome, merged: dict[DHTID, tuple[bytes, Merged]]) -> None:
        """Cache what was found at the nearest peer on each key's lookup path that lacked it."""
        for peer_id, records in plan_caching(outcome.query, outcome.found, merged).items():
            self._spawn(self.protocol.call_store(peer_id, records, in_cache=True))

    # ---- maintenance and lifecycle -------------------------------------------------------------

    async def refresh_buckets(self) -> int:
        """Refresh the buckets that saw no lookup for `refresh_period`; returns how many."""
        return await jobs.refresh_buckets(self)

    async def republish(self) -> int:
        """Push every record we hold to its key's current nearest servers; returns how many."""
        return await jobs.republish(self)

    async def _ping(self, peer_id: PeerID) -> bool:
        return await self.protocol.call_ping(peer_id)

    def _trim_connections(self) -> None:
        """Keep at most `config.max_connections` connections (a remote that reuses one at the instant
        it closes gets its call retried once on a new connection)."""
        if self.config.max_connections is not None:
            self.p2p.pool.trim(self.config.max_connections, TRIM_GRACE)

    async def _run(self, started: asyncio.Event) -> None:
        async with TaskGroup() as group:
            self._group = group
            started.set()
            self._spawn(jobs.run_maintenance(self))
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

    async def shutdown(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner
