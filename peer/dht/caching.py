"""Caching near the reader (section 2.3 of the Kademlia paper).

After a lookup finds a key's value, the reader stores it at the nearest peer of the lookup path that
answered without it. That peer is close to the key, so later lookups of the key from elsewhere are
likely to pass through it and can stop there, a hop earlier. The peer keeps such values in its cache:
a store apart from its replicas that evicts the values expiring soonest when it is full, and that it
serves like stored values. Values are cached as they were found, still wrapped (signed) and with
their own expiration, and the cache node checks them like any record it stores. A dictionary is
cached whole, one record per subkey, unless it has more subkeys than one store request carries.

A cached value can be older than a value stored since; `get(latest=True)` asks the key's replicas
anyway and returns the newest.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from peer.dht.protocol import MAX_ITEMS_PER_REQUEST, FoundValue
from peer.dht.query import ClosestPeersQuery
from peer.dht.reader import Merged
from peer.dht.routing import DHTID
from peer.dht.validation import DHTRecord
from peer.net.identity import PeerID

MAX_CACHED_RECORDS = MAX_ITEMS_PER_REQUEST


def plan_caching(
    query: ClosestPeersQuery,
    found: Mapping[DHTID, Sequence[tuple[PeerID, FoundValue]]],
    merged: Mapping[DHTID, tuple[bytes, Merged]],
) -> dict[PeerID, list[DHTRecord]]:
    """Which records to cache at which peer after `query`.

    `found` holds the valid records each responder returned per key, and `merged` each key's
    serialized key and merged result. Each key's records go to the nearest responder that returned
    nothing valid for it; keys with no such responder, or with nothing found, are not cached.
    """
    plan: dict[PeerID, list[DHTRecord]] = defaultdict(list)
    for key_id, (key, result) in merged.items():
        if result.value is None or not 0 < len(result.records) <= MAX_CACHED_RECORDS:
            continue
        holders = {peer_id for peer_id, _ in found.get(key_id, ())}
        target = next((peer_id for peer_id in query.responders(key_id) if peer_id not in holders), None)
        if target is not None:
            plan[target] += [
                DHTRecord(key, subkey, item.value, item.expiration_time) for subkey, item in result.records
            ]
    return dict(plan)
