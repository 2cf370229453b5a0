"""The background jobs of a DHT node: expiry, bucket refresh and republishing.

Every `maintenance_period` (jittered by +-20 %, so that the peers of one process do not run in step)
`run_maintenance` drops expired values and cache entries, forgets old bans, and refreshes every bucket
that has seen no lookup into its range for `refresh_period`, by looking up a random id in its range.
Every `republish_period` it also pushes each record the node holds to the key's current nearest
servers, so records outlive the churn of the peers that first stored them. A failed round is logged
and the next one runs.

`refresh_buckets(node, everything=True)` is also the second half of joining: after looking up its own
id, a new node refreshes every bucket but its own, as in section 2.3 of the Kademlia paper, so that it
knows servers across the whole id space rather than only its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING

from peer.dht.config import get_dht_time
from peer.dht.validation import DHTRecord

if TYPE_CHECKING:
    from peer.dht.node import DHTNode

logger = logging.getLogger(__name__)


async def run_maintenance(node: DHTNode) -> None:
    """Run the maintenance rounds of `node` until cancelled (see the module docstring)."""
    config = node.config
    last_republish = time.monotonic()
    while True:
        await asyncio.sleep(config.maintenance_period * random.uniform(0.8, 1.2))
        try:
            node.records.remove_expired(get_dht_time())
            node.contacts.blacklist.prune(time.monotonic())
            await refresh_buckets(node)
            if time.monotonic() - last_republish >= config.republish_period:
                last_republish = time.monotonic()
                await republish(node)
        except Exception:  # the boundary: a bad round is logged, the next one runs
            logger.exception("DHT maintenance of %s failed this round", node.peer_id.short())


async def refresh_buckets(node: DHTNode, *, everything: bool = False, k: int | None = None) -> int:
    """Look up a random id in each stale bucket (with `everything`: each bucket but our own, stale or
    not), in one bulk lookup for its `k` nearest; returns how many buckets were refreshed."""
    table = node.contacts.routing_table
    if everything:
        own = table.bucket_for(table.node_id)
        buckets = [bucket for bucket in table.buckets if bucket is not own]
    else:
        buckets = table.buckets_to_refresh(time.monotonic(), node.config.refresh_period)
    if not buckets or not len(table):
        return 0
    await node.find_nearest([bucket.random_id() for bucket in buckets], k=k)
    return len(buckets)


async def republish(node: DHTNode) -> int:
    """Push every record `node` holds to its key's current nearest servers; returns how many."""
    now = get_dht_time()
    node.records.remove_expired(now)
    held = node.records.held(now)
    records = [DHTRecord(key, subkey, item.value, item.expiration_time) for key, subkey, item in held]
    if records:
        await node.store_records(records)
    return len(records)
