"""Maintenance over the network: republishing hands records to the key's current nearest peers, and
the periodic rounds expire, refresh and republish by themselves."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time

from dht_swarm import TEST_CONFIG, shutdown_all, start_swarm

from peer.dht import DHTID, DHTNode, get_dht_time, jobs
from peer.net.p2p import P2P
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


def test_maintenance_rounds_expire_refresh_and_republish_on_their_own() -> None:
    fast = dataclasses.replace(
        TEST_CONFIG, maintenance_period=0.1, refresh_period=0.3, republish_period=0.3, num_replicas=2
    )
    rng = random.Random(31)

    async def scenario():
        swarm = await start_swarm(6, rng, config=fast)
        try:
            node = swarm[0].node
            now = get_dht_time()
            key = "handed-over"  # held only by `node`: republishing hands it to the nearest others
            kept = node.make_record(key, None, "kept", now + 60)
            node.records.store(kept.key, kept.value, kept.expiration_time, now)
            short = node.make_record("short-lived", None, "gone", now + 0.3)
            node.records.store(short.key, short.value, short.expiration_time, now)
            started = time.monotonic()
            key_id = DHTID.from_key(key)
            nearest = sorted(swarm[1:], key=lambda dht: dht.node.node_id.xor_distance(key_id))[:1]
            deadline = asyncio.get_running_loop().time() + 20
            while not (
                len(node.storage) == 1  # only `kept`: the expired entry was dropped, not just hidden
                and min(bucket.last_refreshed for bucket in node.routing_table.buckets) > started  # refreshed
                and all(dht.node.storage.get(key_id, get_dht_time()) is not None for dht in nearest)
            ):
                assert asyncio.get_running_loop().time() < deadline, "maintenance did not run"
                await asyncio.sleep(0.05)
        finally:
            await shutdown_all(swarm)

    run_coroutine(scenario())


def test_joining_looks_up_its_own_id_then_refreshes_every_other_bucket(monkeypatch) -> None:
    refreshes = []
    refresh_buckets = jobs.refresh_buckets

    async def recorded(node, *, everything=False, k=None):
        buckets = len(node.routing_table.buckets)
        refreshed = await refresh_buckets(node, everything=everything, k=k)
        refreshes.append((everything, k, buckets, refreshed))
        return refreshed

    monkeypatch.setattr(jobs, "refresh_buckets", recorded)

    async def scenario():
        small_buckets = dataclasses.replace(TEST_CONFIG, k=4)
        swarm = await start_swarm(24, random.Random(32), config=small_buckets)
        refreshes.clear()
        p2p = await P2P.acreate()
        node = await DHTNode.create(p2p, config=small_buckets)
        try:
            await node.bootstrap([maddr for dht in swarm[:2] for maddr in dht.get_visible_maddrs()])
            return node.stats["lookups"]
        finally:
            await node.shutdown()
            await p2p.ashutdown()
            await shutdown_all(swarm)

    lookups = run_coroutine(scenario())
    [(everything, k, buckets, refreshed)] = refreshes
    assert everything and k == TEST_CONFIG.num_replicas
    assert buckets >= 2 and refreshed == buckets - 1  # every bucket but the one holding our own id
    assert lookups == 1 + refreshed  # our own id, then one random id per other bucket
