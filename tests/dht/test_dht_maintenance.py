"""Maintenance over the network: republishing hands records to the key's current nearest peers."""

from __future__ import annotations

import dataclasses
import random

from dht_swarm import TEST_CONFIG, shutdown_all, start_swarm

from peer.dht import DHTID, get_dht_time
from peer.utils.loop import run_coroutine


def test_republish_moves_records_to_the_new_nearest_peers() -> None:
    config = dataclasses.replace(TEST_CONFIG, num_replicas=2, cache_values=False)
    rng = random.Random(30)

    async def scenario():
        old = await start_swarm(4, rng, config=config)
        new = []
        try:
            expiration = get_dht_time() + 120
            keys = [f"republished/{i}" for i in range(40)]
            assert all((await old[0].astore_many(keys, keys, expiration)).values())
            initial = [maddr for dht in old for maddr in dht.get_visible_maddrs()]
            new = await start_swarm(12, rng, config=dataclasses.replace(config))
            for dht in new:  # join the old swarm
                await dht.node.bootstrap(initial)
            for dht in old:
                await dht.node.republish()
            everyone = old + new
            now = get_dht_time()
            misplaced = []
            for key in keys:
                key_id = DHTID.from_key(key)
                nearest = sorted(everyone, key=lambda dht: dht.node.node_id.xor_distance(key_id))[:2]
                if not all(dht.node.storage.get(key_id, now) is not None for dht in nearest):
                    misplaced.append(key)
            return misplaced
        finally:
            await shutdown_all(old + new)

    assert run_coroutine(scenario()) == []
