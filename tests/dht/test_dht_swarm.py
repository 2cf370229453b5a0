"""64 DHT peers in one process: what one random peer stores, any other random peer finds.

The swarm is shared by the module's tests (each uses its own keys); the churn test kills peers, so
it runs last.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from dht_swarm import bounded_gather, shutdown_all, start_swarm

from peer.dht import DHT, get_dht_time
from peer.utils.loop import run_coroutine

NUM_PEERS = 64
NUM_KEYS = 500


@pytest.fixture(scope="module")
def swarm() -> list[DHT]:
    dhts = run_coroutine(start_swarm(NUM_PEERS, random.Random(1)))
    yield dhts
    run_coroutine(shutdown_all([dht for dht in dhts if dht.is_alive]))


def test_every_key_stored_by_a_random_peer_is_found_by_another(swarm: list[DHT]) -> None:
    rng = random.Random(2)
    expiration = get_dht_time() + 600
    keys = [f"plain/{i}" for i in range(NUM_KEYS)]
    writers = [rng.choice(swarm) for _ in keys]
    readers = [rng.choice([dht for dht in swarm if dht is not writer]) for writer in writers]

    async def scenario():
        stored = await bounded_gather(
            writer.astore(key, {"index": i}, expiration)
            for i, (key, writer) in enumerate(zip(keys, writers, strict=True))
        )
        found = await bounded_gather(reader.aget(key) for key, reader in zip(keys, readers, strict=True))
        return stored, found

    stored, found = run_coroutine(scenario())
    assert all(stored)
    missing = [key for key, item in zip(keys, found, strict=True) if item is None]
    assert missing == []
    assert [item.value for item in found] == [{"index": i} for i in range(NUM_KEYS)]
    assert all(item.expiration_time == expiration for item in found)


def test_subkeys_from_many_writers_merge_into_one_dictionary(swarm: list[DHT]) -> None:
    rng = random.Random(3)
    expiration = get_dht_time() + 600
    num_keys, subkeys_per_key = NUM_KEYS // 4, 4
    writes = [(f"dict/{i}", f"sub{j}", i * 10 + j) for i in range(num_keys) for j in range(subkeys_per_key)]

    async def scenario():
        stored = await bounded_gather(
            rng.choice(swarm).astore(key, value, expiration + value % 7, subkey=subkey)
            for key, subkey, value in writes
        )
        latest = await bounded_gather(
            rng.choice(swarm).aget(f"dict/{i}", latest=True) for i in range(num_keys)
        )
        first = await bounded_gather(rng.choice(swarm).aget(f"dict/{i}") for i in range(num_keys))
        return stored, latest, first

    stored, latest, first = run_coroutine(scenario())
    assert all(stored)
    for i, item in enumerate(latest):
        assert item is not None, f"dict/{i} not found"
        expected = {f"sub{j}": i * 10 + j for j in range(subkeys_per_key)}
        assert {subkey: sub.value for subkey, sub in item.value.items()} == expected
        assert {subkey: sub.expiration_time for subkey, sub in item.value.items()} == {
            f"sub{j}": expiration + (i * 10 + j) % 7 for j in range(subkeys_per_key)
        }
        assert item.expiration_time == max(sub.expiration_time for sub in item.value.values())
    assert all(item is not None and item.value for item in first)


def test_newer_expiration_wins_and_expired_values_vanish(swarm: list[DHT]) -> None:
    rng = random.Random(4)
    now = get_dht_time()
    keys = [f"expiring/{i}" for i in range(100)]

    async def scenario():
        first = await bounded_gather(rng.choice(swarm).astore(key, "v1", now + 300) for key in keys)
        older = await bounded_gather(rng.choice(swarm).astore(key, "older", now + 200) for key in keys)
        after_older = await bounded_gather(rng.choice(swarm).aget(key, latest=True) for key in keys)
        newer = await bounded_gather(rng.choice(swarm).astore(key, "v2", now + 400) for key in keys)
        after_newer = await bounded_gather(rng.choice(swarm).aget(key, latest=True) for key in keys)
        short = await bounded_gather(
            rng.choice(swarm).astore(f"short/{key}", 1, get_dht_time() + 1.5) for key in keys
        )
        await asyncio.sleep(2.0)
        expired = await bounded_gather(rng.choice(swarm).aget(f"short/{key}") for key in keys)
        return first, older, after_older, newer, after_newer, short, expired

    first, older, after_older, newer, after_newer, short, expired = run_coroutine(scenario())
    assert all(first) and all(newer) and all(short)
    # the replicas that hold "v1" refuse "older" (a writer may still leave it on a peer that lacked the key)
    assert sum(older) < len(keys) // 2
    assert [(item.value, item.expiration_time) for item in after_older] == [("v1", now + 300)] * len(keys)
    assert [(item.value, item.expiration_time) for item in after_newer] == [("v2", now + 400)] * len(keys)
    assert expired == [None] * len(keys)


def test_latest_finds_the_freshest_value_despite_stale_caches(swarm: list[DHT]) -> None:
    rng = random.Random(5)
    now = get_dht_time()
    keys = [f"latest/{i}" for i in range(200)]

    async def scenario():
        await bounded_gather(rng.choice(swarm).astore(key, "old", now + 100) for key in keys)
        stale = await bounded_gather(rng.choice(swarm).aget(key) for key in keys)  # caches "old" near readers
        updated = await bounded_gather(rng.choice(swarm).astore(key, "new", now + 200) for key in keys)
        fresh = await bounded_gather(rng.choice(swarm).aget(key, latest=True) for key in keys)
        return stale, updated, fresh

    stale, updated, fresh = run_coroutine(scenario())
    assert all(item is not None and item.value == "old" for item in stale)
    assert all(updated)
    assert [(item.value, item.expiration_time) for item in fresh] == [("new", now + 200)] * len(keys)


def test_one_get_many_costs_far_fewer_requests_than_one_lookup_per_key(swarm: list[DHT]) -> None:
    keys = [f"plain/{i}" for i in range(NUM_KEYS)]  # stored above, or absent: the cost is the same
    bulk_reader, single_reader = swarm[7], swarm[8]

    async def requests_of(dht: DHT, coroutine) -> int:
        before = dht.node.stats["requests"]
        await coroutine
        return dht.node.stats["requests"] - before

    async def scenario():
        bulk = await requests_of(bulk_reader, bulk_reader.aget_many(keys))
        single = await requests_of(single_reader, bounded_gather(single_reader.aget(key) for key in keys))
        return bulk, single

    bulk, single = run_coroutine(scenario())
    assert bulk * 4 < single, (bulk, single)


def test_values_survive_when_a_quarter_of_the_peers_die(swarm: list[DHT]) -> None:
    rng = random.Random(6)
    expiration = get_dht_time() + 600
    keys = [f"durable/{i}" for i in range(200)]
    stored = run_coroutine(bounded_gather(rng.choice(swarm).astore(key, key, expiration) for key in keys))
    assert all(stored)
    victims = rng.sample(swarm, len(swarm) // 4)
    run_coroutine(shutdown_all(victims))
    survivors = [dht for dht in swarm if dht not in victims]
    found = run_coroutine(bounded_gather(rng.choice(survivors).aget(key) for key in keys))
    assert [item.value if item else None for item in found] == keys
    found_again = run_coroutine(rng.choice(survivors).aget_many(keys))  # the bulk path, too
    assert [found_again[key].value if found_again[key] else None for key in keys] == keys
