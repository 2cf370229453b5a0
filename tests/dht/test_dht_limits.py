"""Abuse limits over the network: oversize values, subkey floods, full nodes and oversize requests
get clear refusals, and the node keeps serving afterwards."""

from __future__ import annotations

import dataclasses
import random

import pytest
from dht_swarm import TEST_CONFIG, running_swarm

from peer.dht import DHT, DHTID, DHTRecord, StorageLimits, get_dht_time, protocol
from peer.dht.protocol import FIND, MAX_ITEMS_PER_REQUEST, STORE
from peer.errors import RPCError
from peer.proto import dht_pb2
from peer.utils.loop import run_coroutine

SMALL = StorageLimits(max_value_size=1024, max_subkeys_per_key=16, max_entries=64)


def healthy(swarm) -> bool:
    """Every peer still stores and serves a fresh key."""
    expiration = get_dht_time() + 60
    key = f"health/{random.random()}"
    return swarm[0].store(key, "ok", expiration) and all(dht.get(key).value == "ok" for dht in swarm)


def test_oversize_values_are_refused_by_writer_and_replicas() -> None:
    config = dataclasses.replace(TEST_CONFIG, storage_limits=SMALL)
    with running_swarm(4, random.Random(20), config=config) as swarm:
        expiration = get_dht_time() + 60
        with pytest.raises(ValueError, match="max_value_size"):
            swarm[0].store("big", b"x" * 4096, expiration)
        # a writer with laxer limits: every replica refuses, the store reports failure
        record = DHTRecord.create("big", None, b"\xc5" + b"x" * 4096, expiration)
        node = swarm[0].node
        outcomes = run_coroutine(node.protocol.call_store(swarm[1].peer_id, [record]))
        assert outcomes == [False]
        assert all(dht.node.storage.get(DHTID.from_key("big"), get_dht_time()) is None for dht in swarm)
        assert swarm[2].get("big") is None
        assert healthy(swarm)


def test_subkey_flood_is_capped_per_key() -> None:
    config = dataclasses.replace(TEST_CONFIG, storage_limits=SMALL)
    with running_swarm(4, random.Random(21), config=config) as swarm:
        expiration = get_dht_time() + 60
        subkeys = [f"s{i}" for i in range(40)]
        outcome = swarm[1].store_many(["flood"] * 40, list(range(40)), expiration, subkeys=subkeys)
        accepted = [ok for ok in outcome.values()]
        assert sum(accepted) == SMALL.max_subkeys_per_key
        found = swarm[3].get("flood", latest=True)
        assert found is not None and len(found.value) == SMALL.max_subkeys_per_key
        assert all(len(dht.node.storage) <= SMALL.max_entries for dht in swarm)
        assert healthy(swarm)


def test_a_full_node_refuses_new_entries_and_keeps_serving() -> None:
    config = dataclasses.replace(TEST_CONFIG, storage_limits=SMALL, num_replicas=1)
    with running_swarm(2, random.Random(22), config=config) as swarm:
        expiration = get_dht_time() + 60
        keys = [f"fill/{i}" for i in range(3 * SMALL.max_entries)]
        stored = swarm[0].store_many(keys, [0] * len(keys), expiration)
        assert 0 < sum(stored.values()) < len(keys)
        assert all(len(dht.node.storage) <= SMALL.max_entries for dht in swarm)
        kept = [key for key in keys if stored[key]]
        assert all(swarm[1].get(key) is not None for key in kept[:20])


def test_oversize_requests_are_refused_with_an_error_not_a_crash() -> None:
    with running_swarm(2, random.Random(23)) as swarm:
        caller, target = swarm[0], swarm[1]
        expiration = get_dht_time() + 60
        item = dht_pb2.StoreItem(key=b"\xa1k", value=b"\x01", expiration_time=expiration)
        store = dht_pb2.StoreRequest(items=[item] * (MAX_ITEMS_PER_REQUEST + 1))
        find = dht_pb2.FindRequest(key_ids=[DHTID.random().to_bytes()] * 300 + [b"short"])

        async def flood():
            errors = []
            for method, request, response_type in (
                (STORE, store, dht_pb2.StoreResponse),
                (FIND, find, dht_pb2.FindResponse),
            ):
                with pytest.raises(RPCError) as error:
                    await caller.p2p.acall_unary(target.peer_id, method, request, response_type, timeout=5)
                errors.append(str(error.value))
            return errors

        errors = run_coroutine(flood())
        assert "at most" in errors[0] and "at most" in errors[1]
        # a bulk lookup of more keys than one request may carry is split, not refused
        many = [f"many/{i}" for i in range(600)]
        assert all(caller.store_many(many[:50], [1] * 50, expiration).values())
        found = caller.get_many(many)
        assert sum(item is not None for item in found.values()) == 50
        assert caller.node.blacklist.failures(target.peer_id) == 0
        assert healthy(swarm)


def test_a_key_bigger_than_a_find_reply_is_read_as_its_newest_entries_and_bans_nobody(monkeypatch) -> None:
    """Before find replies had a budget, a dictionary over the 64 MiB message limit (4,096 subkeys
    allow 256 MiB) made every find of it fail: the key read as absent and its replicas got banned."""
    monkeypatch.setattr(protocol, "FIND_REPLY_BUDGET", 200_000)
    with running_swarm(4, random.Random(24)) as swarm:
        writer = swarm[0]
        reader = DHT(swarm[1].get_visible_maddrs(), client_mode=True, config=TEST_CONFIG)  # holds nothing
        try:
            expiration = get_dht_time() + 60
            for index in range(10):  # 10 x 60 kB: about three fit in one reply
                assert writer.store("huge", b"x" * 60_000, expiration + index, subkey=f"s{index}")
            found = reader.get("huge", latest=True)
            assert found is not None
            assert sorted(found.value) == ["s7", "s8", "s9"]  # the newest entries
            assert not any(reader.node.contacts.is_banned(dht.peer_id) for dht in swarm)
            assert reader.get("huge") is not None and healthy(swarm)
        finally:
            reader.shutdown()


def test_a_bulk_read_bigger_than_a_find_reply_gets_every_key(monkeypatch) -> None:
    monkeypatch.setattr(protocol, "FIND_REPLY_BUDGET", 200_000)
    with running_swarm(4, random.Random(25)) as swarm:
        writer = swarm[0]
        reader = DHT(swarm[1].get_visible_maddrs(), client_mode=True, config=TEST_CONFIG)  # holds nothing
        try:
            expiration = get_dht_time() + 60
            keys = [f"bulk/{index}" for index in range(20)]  # 20 x 60 kB: seven replies' worth
            assert all(writer.store_many(keys, [b"y" * 60_000] * len(keys), expiration).values())
            found = reader.get_many(keys)
            assert all(found[key] is not None and found[key].value == b"y" * 60_000 for key in keys)
            assert not any(reader.node.contacts.is_banned(dht.peer_id) for dht in swarm)
        finally:
            reader.shutdown()


@pytest.mark.parametrize(
    "field, value",
    [
        ("request_timeout", float("nan")),
        ("request_timeout", float("inf")),
        ("refresh_period", 0),
        ("num_replicas", "3"),
        ("num_replicas", 2.5),
        ("alpha", True),
        ("max_connections", 0),
        ("max_connections", "8"),
    ],
)
def test_bad_parameters_are_refused_naming_the_parameter(field, value) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be"):
        dataclasses.replace(TEST_CONFIG, **{field: value})
