"""Validators on the wire: forged and schema-violating records are refused on store and on read;
client-mode peers are served but never routed to; bootstrap failures say what was tried."""

from __future__ import annotations

import dataclasses
import random

import msgpack
import pydantic
import pytest
from dht_swarm import TEST_CONFIG, running_swarm

from peer.dht import (
    DHT,
    DHTID,
    DHTRecord,
    InvalidRecordError,
    SchemaValidator,
    get_dht_time,
    owner_marker,
    sign_value,
)
from peer.dht.validation import decode_subkey
from peer.errors import DHTError
from peer.net.identity import Identity
from peer.utils.loop import run_coroutine


class Progress(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    epoch: int
    samples: int


def forged_record(key: str, subkey: str | None, value: object, expiration: float) -> DHTRecord:
    """A record for a key owned by someone, signed by a stranger's key."""
    record = DHTRecord.create(key, subkey, msgpack.packb(value), expiration)
    envelope = sign_value(Identity.generate(), record.key, record.subkey, record.value, expiration)
    return DHTRecord(record.key, record.subkey, envelope, expiration)


def holders(swarm: list[DHT], key: str) -> list[DHT]:
    key_id = DHTID.from_key(key)
    now = get_dht_time()
    return [dht for dht in swarm if dht.node.storage.get(key_id, now) is not None]


def test_forged_signed_records_are_refused_on_store_and_dropped_on_read() -> None:
    config = dataclasses.replace(TEST_CONFIG, num_replicas=3, cache_values=False)
    with running_swarm(10, random.Random(10), config=config) as swarm:
        alice, mallory, reader = swarm[0], swarm[1], swarm[2]
        key = f"profile{owner_marker(alice.peer_id)}"
        expiration = get_dht_time() + 60

        # store path: every peer refuses the forgery, so nobody holds it
        forged = forged_record(key, None, "mallory was here", expiration)
        node = mallory.node
        outcomes = run_coroutine(
            _store_everywhere(node, [dht.peer_id for dht in swarm if dht is not mallory], forged)
        )
        assert outcomes and not any(outcomes)
        assert holders(swarm, key) == []
        assert sum(dht.node.protocol.num_invalid_records for dht in swarm) >= len(outcomes)
        with pytest.raises(InvalidRecordError):  # mallory's own DHT will not sign for alice
            mallory.store(key, "x", expiration)

        # alice's real record is stored and read
        assert alice.store(key, "hello", expiration)
        assert reader.get(key).value == "hello"

        # read path: the replicas nearest to the key serve a forgery with a later expiration (as if
        # they skipped their checks); readers drop it and keep searching for the valid value
        later = forged_record(key, None, "forged", expiration + 30)
        key_id = DHTID.from_key(key)
        honest = holders(swarm, key)
        honest.sort(key=lambda dht: dht.node.node_id.xor_distance(key_id))
        liars, honest = honest[: len(honest) // 2], honest[len(honest) // 2 :]
        assert liars and honest and len(liars) + len(honest) < len(swarm) - 2
        for dht in liars:
            dht.node.storage.store(key_id, later.value, later.expiration_time, get_dht_time())
        readers = [dht for dht in swarm if dht not in liars and dht not in honest]
        invalid_before = sum(dht.node.protocol.num_invalid_records for dht in readers)
        for dht in readers:
            assert dht.get(key).value == "hello"
            assert dht.get(key, latest=True).value == "hello"
        assert sum(dht.node.protocol.num_invalid_records for dht in readers) > invalid_before


async def _store_everywhere(node, peer_ids, record) -> list[bool]:
    results = []
    for peer_id in peer_ids:
        outcome = await node.protocol.call_store(peer_id, [record])
        assert outcome is not None, "the peer must answer with a refusal, not fail"
        results.extend(outcome)
    return results


def test_forged_subkey_is_dropped_but_valid_subkeys_are_returned() -> None:
    with running_swarm(6, random.Random(11)) as swarm:
        alice, bob, reader = swarm[0], swarm[1], swarm[4]
        key, expiration = "run_peers", get_dht_time() + 60
        assert alice.store(key, "alice", expiration, subkey=owner_marker(alice.peer_id))
        assert bob.store(key, "bob", expiration, subkey=owner_marker(bob.peer_id))
        forged = forged_record(key, owner_marker(alice.peer_id), "not alice", expiration + 5)
        key_id = DHTID.from_key(key)
        for dht in holders(swarm, key):  # plant it as if a replica had skipped validation
            dht.node.storage.store(
                key_id, forged.value, forged.expiration_time, get_dht_time(), forged.subkey
            )
        found = reader.get(key, latest=True)
        assert found is not None
        values = {subkey: item.value for subkey, item in found.value.items()}
        assert values.get(owner_marker(bob.peer_id)) == "bob"
        assert values.get(owner_marker(alice.peer_id)) != "not alice"


@pytest.mark.parametrize("subkey", [("x", 1), [1], {"a": 1}, True, 1.0, None])
def test_a_subkey_must_be_a_str_bytes_or_int(subkey) -> None:
    record_subkey = msgpack.packb(subkey)
    with pytest.raises(InvalidRecordError, match="subkey must be a str, bytes or int"):
        decode_subkey(record_subkey)
    if subkey is not None:
        with pytest.raises(TypeError, match="subkey must be a str, bytes or int"):
            DHTRecord.create("k", subkey, b"v", 1.0)
    for good in ("peer", b"\x00raw", 7, -1):
        assert decode_subkey(msgpack.packb(good, use_bin_type=True)) == good


def test_a_subkey_that_cannot_be_a_dict_key_is_refused_by_replicas_and_dropped_by_readers() -> None:
    """One peer writing a subkey that decodes to a list or a map used to make every `get` of the key
    raise TypeError (unhashable) on every reader, the valid subkeys included."""
    with running_swarm(6, random.Random(12)) as swarm:
        alice, mallory, reader = swarm[0], swarm[2], swarm[4]
        key, expiration = "run_matchmaking", get_dht_time() + 60
        with pytest.raises(TypeError, match="subkey must be a str, bytes or int"):
            alice.store(key, 1, expiration, subkey=("x", 1))
        assert alice.store(key, "alice", expiration, subkey="alice")
        hostile = DHTRecord(msgpack.packb(key), msgpack.packb({"a": 1}), msgpack.packb(0), expiration)
        replicas = [dht for dht in holders(swarm, key) if dht is not mallory]
        for dht in replicas:  # every replica refuses it
            assert run_coroutine(mallory.node.protocol.call_store(dht.peer_id, [hostile])) == [False]
        key_id = DHTID.from_key(key)
        for dht in holders(swarm, key):  # plant it as if a replica had skipped validation
            dht.node.storage.store(key_id, hostile.value, expiration, get_dht_time(), hostile.subkey)
        for latest in (False, True):
            found = reader.get(key, latest=latest)
            assert found is not None and {k: v.value for k, v in found.value.items()} == {"alice": "alice"}


def test_schema_violations_are_refused_by_writer_replicas_and_readers() -> None:
    schema = SchemaValidator({"run1_progress": Progress})
    with running_swarm(6, random.Random(12), record_validators=[schema]) as swarm:
        writer, reader = swarm[0], swarm[3]
        expiration = get_dht_time() + 60
        subkey = owner_marker(writer.peer_id)
        assert writer.store("run1_progress", {"epoch": 1, "samples": 10}, expiration, subkey=subkey)
        with pytest.raises(InvalidRecordError):
            writer.store("run1_progress", {"epoch": "one"}, expiration, subkey=subkey)

        bad = DHTRecord.create("run1_progress", "anon", msgpack.packb({"epoch": 1, "extra": 2}), expiration)
        outcomes = run_coroutine(_store_everywhere(writer.node, [dht.peer_id for dht in swarm[1:]], bad))
        assert not any(outcomes)

        key_id = DHTID.from_key("run1_progress")
        for dht in swarm:  # plant the bad subkey everywhere: readers must drop it
            dht.node.storage.store(key_id, bad.value, expiration, get_dht_time(), bad.subkey)
        found = reader.get("run1_progress", latest=True)
        assert found is not None
        assert {key: item.value for key, item in found.value.items()} == {subkey: {"epoch": 1, "samples": 10}}


def test_client_mode_peer_stores_and_gets_but_is_never_routed_to() -> None:
    with running_swarm(10, random.Random(13)) as swarm:
        initial = swarm[0].get_visible_maddrs() + swarm[5].get_visible_maddrs()
        client = DHT(initial, client_mode=True, config=TEST_CONFIG)
        try:
            assert client.get_visible_maddrs() == []
            expiration = get_dht_time() + 60
            keys = [f"from-client/{i}" for i in range(30)]
            assert all(client.store_many(keys, list(range(30)), expiration).values())
            assert [swarm[9].get(key).value for key in keys] == list(range(30))
            assert swarm[2].store("to-client", "hi", expiration)
            assert client.get("to-client").value == "hi"
            assert len(client.node.routing_table) > 0
            assert client.node.storage.total_bytes == 0  # a client holds no replicas
            for dht in swarm:
                assert client.peer_id not in dht.node.routing_table
                assert all(
                    client.peer_id not in bucket.replacements for bucket in dht.node.routing_table.buckets
                )
        finally:
            client.shutdown()


def test_bootstrap_failure_names_every_address_tried_and_why() -> None:
    with running_swarm(1, random.Random(14)) as swarm:
        alive = swarm[0]
        dead_maddr = alive.get_visible_maddrs()[0]
        client = DHT([alive.get_visible_maddrs()[0]], client_mode=True, config=TEST_CONFIG)
        client_maddr = None
        try:
            client_maddr = f"/ip4/127.0.0.1/tcp/1/p2p/{client.peer_id}"
        finally:
            client.shutdown()
    # the swarm is gone now: its address refuses connections
    with pytest.raises(DHTError) as error:
        DHT([dead_maddr, client_maddr], config=TEST_CONFIG)
    message = str(error.value)
    assert dead_maddr in message and client_maddr in message
    assert "could not join the DHT" in message
