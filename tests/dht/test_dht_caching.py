"""Caching near the reader, over the network: after a lookup that passed through peers lacking the
value, the nearest of them caches it, and it serves the value even once the only holder is gone."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable

import pytest
from dht_swarm import TEST_CONFIG, shutdown_all, start_swarm

from peer.dht import DHT, DHTID, get_dht_time
from peer.utils.loop import run_coroutine

CONFIG = dataclasses.replace(TEST_CONFIG, num_replicas=1)  # the lookup ends at the one holder


async def eventually(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never became true"
        await asyncio.sleep(0.02)


def plant(holder: DHT, key: str, items: dict[str | None, object], expiration: float) -> None:
    """Store records at `holder` only, as if it were the key's one surviving replica."""
    for subkey, value in items.items():
        record = holder.node.make_record(key, subkey, value, expiration)
        holder.node.records.store(record.key, record.value, expiration, get_dht_time(), record.subkey)


def cachers(swarm: list[DHT], key_id: DHTID) -> list[DHT]:
    now = get_dht_time()
    return [dht for dht in swarm if dht.is_alive and dht.node.cache.get(key_id, now) is not None]


@pytest.mark.parametrize("items", [{None: "plain"}, {"a": 1, "b": 2, "c": 3}], ids=["plain", "dictionary"])
def test_the_nearest_peer_on_the_path_caches_the_value_and_serves_it_when_the_holder_dies(items) -> None:
    key = f"cached/{len(items)}"
    key_id = DHTID.from_key(key)
    expected = items[None] if None in items else {subkey: value for subkey, value in items.items()}

    def value_of(found):
        if found is None or None in items:
            return None if found is None else found.value
        return {subkey: item.value for subkey, item in found.value.items()}

    async def scenario():
        swarm = await start_swarm(12, random.Random(40 + len(items)), config=CONFIG)
        try:
            reader, others = swarm[0], swarm[1:]
            holder = min(others, key=lambda dht: dht.node.node_id.xor_distance(key_id))
            expiration = get_dht_time() + 60
            plant(holder, key, items, expiration)
            reader.node.routing_table.remove(holder.peer_id)  # the lookup must pass through others
            first = await reader.aget(key)
            await eventually(lambda: len(cachers(swarm, key_id)) == 1)
            [cacher] = cachers(swarm, key_id)
            now = get_dht_time()
            held, cached = holder.node.storage.get(key_id, now), cacher.node.cache.get(key_id, now)
            replica_at_cacher = cacher.node.storage.get(key_id, now)
            holder_id = holder.peer_id
            await holder.ashutdown()
            reader.node.routing_table.remove(holder_id)  # it answered the first lookup
            second = await reader.aget(key)
            return first, held, cached, replica_at_cacher, second
        finally:
            await shutdown_all(dht for dht in swarm if dht.is_alive)

    first, held, cached, replica_at_cacher, second = run_coroutine(scenario())
    assert value_of(first) == expected
    assert replica_at_cacher is None  # a cache, not a replica
    assert cached == held  # the records as stored, still wrapped, with their own expiration
    assert value_of(second) == expected  # served by the cache: the only holder is gone


def test_nothing_is_cached_when_caching_is_off() -> None:
    config = dataclasses.replace(CONFIG, cache_values=False)
    key = "uncached"
    key_id = DHTID.from_key(key)

    async def scenario():
        swarm = await start_swarm(8, random.Random(43), config=config)
        try:
            reader = swarm[0]
            holder = min(swarm[1:], key=lambda dht: dht.node.node_id.xor_distance(key_id))
            plant(holder, key, {None: "v"}, get_dht_time() + 60)
            reader.node.routing_table.remove(holder.peer_id)
            found = await reader.aget(key)
            await asyncio.sleep(0.3)  # what a background cache store would need, many times over
            return found, cachers(swarm, key_id)
        finally:
            await shutdown_all(swarm)

    found, caching_peers = run_coroutine(scenario())
    assert found is not None and found.value == "v"
    assert caching_peers == []
