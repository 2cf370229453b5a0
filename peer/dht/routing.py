"""Kademlia ids and the routing table: a plain data structure, fed peers and the clock.

**Ids.** A `DHTID` is a 160-bit integer (`ID_BITS`). A node's id is the BLAKE2b-160 hash of its
PeerID bytes, so a remote cannot pick where it sits in the id space without grinding keys; a key's
id is the BLAKE2b-160 hash of the msgpack-serialized key. Distance is XOR.

**Buckets.** The table starts with one `KBucket` over the whole id space. A bucket holds at most
`k` (`K_VALUE` = 20) nodes ordered from least to most recently seen, plus a replacement cache of
nodes seen while it was full. A full bucket splits in two halves when a new node falls in it and
either the bucket's range holds our own id or its depth is not a multiple of `depth_modulo`
(`DEPTH_MODULO` = 5): the relaxed rule of the Kademlia paper (section 4.2), which keeps up to
2^(b-1) buckets' worth of nodes in far, unbalanced subtrees so lookups take fewer hops.

**Ping before evicting.** Adding a node to a full bucket that may not split puts the newcomer in
the replacement cache and returns the bucket's least-recently-seen (LRS) node for the driver to
ping (`AddStatus.PENDING`, `AddResult.to_ping`). On a failed ping the driver calls
`on_ping_failure`, which evicts the LRS node and promotes the most recently seen replacement; on
a successful ping it calls `on_ping_success`, which moves the LRS node to the tail (the newcomer
stays in the replacement cache). The same LRS node may be returned for several newcomers: the
driver pings it once.

**Client-mode peers** never enter the table: `add_or_update(..., is_server=False)` refuses them
with `AddStatus.REFUSED_CLIENT` (and drops the peer if it was known as a server before). The
caller states `is_server` from what the remote said about itself in its request.

**Refresh.** `buckets_to_refresh(now, period)` lists buckets with no lookup into their range
for `period` seconds; the driver looks up `bucket.random_id()` for each and calls
`mark_refreshed(target, now)` for every lookup it runs.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import hashlib
import random
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from peer.net.identity import PeerID

ID_BITS = 160
ID_BYTES = ID_BITS // 8
MAX_ID = 2**ID_BITS
K_VALUE = 20
DEPTH_MODULO = 5
MAX_MADDRS_PER_NODE = 8
NODE_ID_CACHE_SIZE = 65536


def _hash160(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=ID_BYTES).digest(), "big")


@dataclass(frozen=True, order=True)
class DHTID:
    """A 160-bit node or key id; order is numeric, distance is `xor_distance`."""

    value: int

    def __post_init__(self) -> None:
        if not isinstance(self.value, int) or isinstance(self.value, bool):
            raise TypeError(f"value must be an int, not {type(self.value).__name__}")
        if not 0 <= self.value < MAX_ID:
            raise ValueError(f"value must be in [0, 2**{ID_BITS}), got {self.value}")

    @classmethod
    def from_peer_id(cls, peer_id: PeerID) -> DHTID:
        """The node id of a peer: BLAKE2b-160 of its PeerID bytes (memoized: lookups ask often)."""
        if not isinstance(peer_id, PeerID):
            raise TypeError(f"peer_id must be a PeerID, not {type(peer_id).__name__}")
        node_id = _NODE_IDS.get(peer_id)
        if node_id is None:
            node_id = cls(_hash160(peer_id.to_bytes()))
            if len(_NODE_IDS) >= NODE_ID_CACHE_SIZE:
                _NODE_IDS.clear()
            _NODE_IDS[peer_id] = node_id
        return node_id

    @classmethod
    def from_key(cls, key: Any) -> DHTID:
        """The id of a DHT key: BLAKE2b-160 of `msgpack.packb(key)`."""
        return cls.from_key_bytes(serialize_key(key))

    @classmethod
    def from_key_bytes(cls, serialized_key: bytes) -> DHTID:
        """The id of a key already serialized with `serialize_key` (as it travels on the wire)."""
        if not isinstance(serialized_key, bytes):
            raise TypeError(f"serialized_key must be bytes, not {type(serialized_key).__name__}")
        return cls(_hash160(serialized_key))

    @classmethod
    def from_bytes(cls, data: bytes) -> DHTID:
        """Parse the 20-byte big-endian form made by `to_bytes`."""
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if len(data) != ID_BYTES:
            raise ValueError(f"data must be {ID_BYTES} bytes long, got {len(data)}")
        return cls(int.from_bytes(data, "big"))

    @classmethod
    def random(cls, rng: random.Random | None = None) -> DHTID:
        return cls((rng or random).getrandbits(ID_BITS))

    def to_bytes(self) -> bytes:
        return self.value.to_bytes(ID_BYTES, "big")

    def xor_distance(self, other: DHTID) -> int:
        return self.value ^ other.value

    def __repr__(self) -> str:
        return f"DHTID({self.value:040x})"


_NODE_IDS: dict[PeerID, DHTID] = {}  # memo of DHTID.from_peer_id, bounded by NODE_ID_CACHE_SIZE


def serialize_key(key: Any) -> bytes:
    """The canonical bytes of a DHT key or subkey (msgpack, bin type for bytes)."""
    try:
        return msgpack.packb(key, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"key {key!r} cannot be serialized with msgpack: {e}") from None


@dataclass(frozen=True)
class NodeInfo:
    """A server peer known to the routing table."""

    node_id: DHTID
    peer_id: PeerID
    maddrs: tuple[str, ...]
    last_seen: float


class AddStatus(enum.Enum):
    ADDED = "added"  # the node is now in its bucket
    UPDATED = "updated"  # the node was in its bucket; it is now the most recently seen
    PENDING = "pending"  # the bucket is full: the newcomer waits in the replacement cache
    REFUSED_CLIENT = "refused_client"  # client-mode peers are never routed to
    REFUSED_SELF = "refused_self"  # our own id


@dataclass(frozen=True)
class AddResult:
    """What `RoutingTable.add_or_update` did; `to_ping` is set when the status is PENDING."""

    status: AddStatus
    to_ping: NodeInfo | None = None


class KBucket:
    """The nodes whose ids lie in [lower, upper), least recently seen first, plus replacements."""

    def __init__(self, lower: int, upper: int, depth: int, *, k: int, last_refreshed: float):
        self.lower = lower
        self.upper = upper
        self.depth = depth
        self.k = k
        self.last_refreshed = last_refreshed
        self.nodes: OrderedDict[PeerID, NodeInfo] = OrderedDict()
        self.replacements: OrderedDict[PeerID, NodeInfo] = OrderedDict()

    def covers(self, node_id: DHTID) -> bool:
        return self.lower <= node_id.value < self.upper

    @property
    def is_full(self) -> bool:
        return len(self.nodes) >= self.k

    def least_recently_seen(self) -> NodeInfo | None:
        return next(iter(self.nodes.values()), None)

    def random_id(self, rng: random.Random | None = None) -> DHTID:
        """A uniformly random id inside this bucket's range, to look up when refreshing it."""
        return DHTID((rng or random).randrange(self.lower, self.upper))

    def min_distance(self, target: DHTID) -> int:
        """The smallest XOR distance from `target` to any id in this (prefix-aligned) range."""
        shift = ID_BITS - self.depth
        return ((self.lower ^ target.value) >> shift) << shift

    def split(self) -> tuple[KBucket, KBucket]:
        middle = (self.lower + self.upper) // 2
        halves = (
            KBucket(self.lower, middle, self.depth + 1, k=self.k, last_refreshed=self.last_refreshed),
            KBucket(middle, self.upper, self.depth + 1, k=self.k, last_refreshed=self.last_refreshed),
        )
        for peer_id, node in self.nodes.items():  # kept in least-recently-seen order
            halves[node.node_id.value >= middle].nodes[peer_id] = node
        for peer_id, node in self.replacements.items():
            halves[node.node_id.value >= middle].replacements[peer_id] = node
        return halves

    def __repr__(self) -> str:
        return f"KBucket(depth={self.depth}, nodes={len(self.nodes)}, replacements={len(self.replacements)})"


class RoutingTable:
    """Kademlia's routing table for the node `node_id` (see the module docstring)."""

    def __init__(
        self,
        node_id: DHTID,
        *,
        k: int = K_VALUE,
        depth_modulo: int = DEPTH_MODULO,
        replacement_cache_size: int = K_VALUE,
        now: float = 0.0,
    ):
        if not isinstance(node_id, DHTID):
            raise TypeError(f"node_id must be a DHTID, not {type(node_id).__name__}")
        for name, number in (
            ("k", k),
            ("depth_modulo", depth_modulo),
            ("replacement_cache_size", replacement_cache_size),
        ):
            if not isinstance(number, int) or number < 1:
                raise ValueError(f"{name} must be a positive int, got {number!r}")
        self.node_id = node_id
        self.k = k
        self.depth_modulo = depth_modulo
        self.replacement_cache_size = replacement_cache_size
        self.buckets: list[KBucket] = [KBucket(0, MAX_ID, 0, k=k, last_refreshed=now)]
        self._lowers: list[int] = [0]

    # ----- lookups -----

    def bucket_for(self, node_id: DHTID) -> KBucket:
        """The bucket whose range holds `node_id`."""
        return self.buckets[bisect.bisect_right(self._lowers, node_id.value) - 1]

    def get(self, peer_id: PeerID) -> NodeInfo | None:
        return self.bucket_for(DHTID.from_peer_id(peer_id)).nodes.get(peer_id)

    def __contains__(self, peer_id: object) -> bool:
        return isinstance(peer_id, PeerID) and self.get(peer_id) is not None

    def __len__(self) -> int:
        return sum(len(bucket.nodes) for bucket in self.buckets)

    def __iter__(self) -> Iterator[NodeInfo]:
        for bucket in self.buckets:
            yield from bucket.nodes.values()

    def nearest(
        self, target: DHTID, k: int | None = None, exclude: Collection[PeerID] = ()
    ) -> list[NodeInfo]:
        """The `k` (default: the table's k) known nodes closest to `target` by XOR, closest first.

        Buckets are prefix ranges, so their distance intervals to `target` are disjoint: we visit
        buckets by their smallest distance and stop once `k` nodes are collected from whole buckets.
        """
        if not isinstance(target, DHTID):
            raise TypeError(f"target must be a DHTID, not {type(target).__name__}")
        k = self.k if k is None else k
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative int, got {k!r}")
        collected: list[NodeInfo] = []
        for bucket in sorted(self.buckets, key=lambda b: b.min_distance(target)):
            if len(collected) >= k:
                break
            collected.extend(node for node in bucket.nodes.values() if node.peer_id not in exclude)
        collected.sort(key=lambda node: node.node_id.value ^ target.value)
        return collected[:k]

    # ----- updates -----

    def add_or_update(
        self, peer_id: PeerID, maddrs: Sequence[str], now: float, *, is_server: bool
    ) -> AddResult:
        """Record that `peer_id` (reachable at `maddrs`) was seen at `now`.

        `is_server` is what the remote declared: a client-mode peer is refused (and dropped if it was
        known as a server). See `AddStatus` for the outcomes.
        """
        if not isinstance(peer_id, PeerID):
            raise TypeError(f"peer_id must be a PeerID, not {type(peer_id).__name__}")
        if isinstance(maddrs, str) or not all(isinstance(maddr, str) for maddr in maddrs):
            raise TypeError("maddrs must be a sequence of multiaddr strings")
        node = NodeInfo(DHTID.from_peer_id(peer_id), peer_id, tuple(maddrs[:MAX_MADDRS_PER_NODE]), now)
        if node.node_id == self.node_id:
            return AddResult(AddStatus.REFUSED_SELF)
        if not is_server:
            self.remove(peer_id)
            self.bucket_for(node.node_id).replacements.pop(peer_id, None)
            return AddResult(AddStatus.REFUSED_CLIENT)
        while True:
            bucket = self.bucket_for(node.node_id)
            if peer_id in bucket.nodes:
                bucket.nodes[peer_id] = node
                bucket.nodes.move_to_end(peer_id)
                return AddResult(AddStatus.UPDATED)
            if not bucket.is_full:
                bucket.replacements.pop(peer_id, None)
                bucket.nodes[peer_id] = node
                return AddResult(AddStatus.ADDED)
            if not self._may_split(bucket):
                self._add_replacement(bucket, node)
                return AddResult(AddStatus.PENDING, to_ping=bucket.least_recently_seen())
            self._split(bucket)

    def on_ping_success(self, peer_id: PeerID, now: float) -> bool:
        """The LRS node answered our ping: it becomes the most recently seen. False if unknown."""
        bucket = self.bucket_for(DHTID.from_peer_id(peer_id))
        node = bucket.nodes.get(peer_id)
        if node is None:
            return False
        bucket.nodes[peer_id] = dataclasses.replace(node, last_seen=now)
        bucket.nodes.move_to_end(peer_id)
        return True

    def on_ping_failure(self, peer_id: PeerID) -> NodeInfo | None:
        """The node did not answer a ping: evict it; returns the replacement promoted, if any."""
        bucket = self.bucket_for(DHTID.from_peer_id(peer_id))
        if bucket.nodes.pop(peer_id, None) is None:
            return None
        return self._promote_replacement(bucket)

    def remove(self, peer_id: PeerID) -> bool:
        """Forget a node (a replacement takes its place); False if it was not in the table."""
        bucket = self.bucket_for(DHTID.from_peer_id(peer_id))
        if bucket.nodes.pop(peer_id, None) is None:
            return False
        self._promote_replacement(bucket)
        return True

    # ----- refresh -----

    def mark_refreshed(self, target: DHTID, now: float) -> None:
        """A lookup for `target` ran at `now`: the bucket covering it counts as refreshed."""
        self.bucket_for(target).last_refreshed = now

    def buckets_to_refresh(self, now: float, period: float) -> list[KBucket]:
        """Buckets with no lookup into their range for at least `period` seconds."""
        if period < 0:
            raise ValueError(f"period must be non-negative, got {period}")
        return [bucket for bucket in self.buckets if now - bucket.last_refreshed >= period]

    # ----- internals -----

    def _may_split(self, bucket: KBucket) -> bool:
        if bucket.depth >= ID_BITS:
            return False
        return bucket.covers(self.node_id) or bucket.depth % self.depth_modulo != 0

    def _split(self, bucket: KBucket) -> None:
        index = self.buckets.index(bucket)
        left, right = bucket.split()
        self.buckets[index : index + 1] = [left, right]
        self._lowers[index : index + 1] = [left.lower, right.lower]

    def _add_replacement(self, bucket: KBucket, node: NodeInfo) -> None:
        bucket.replacements.pop(node.peer_id, None)
        bucket.replacements[node.peer_id] = node
        while len(bucket.replacements) > self.replacement_cache_size:
            bucket.replacements.popitem(last=False)

    def _promote_replacement(self, bucket: KBucket) -> NodeInfo | None:
        if not bucket.replacements or bucket.is_full:
            return None
        peer_id, node = bucket.replacements.popitem(last=True)
        bucket.nodes[peer_id] = node
        return node
