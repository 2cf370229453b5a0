"""The routing table: ids, nearest vs brute force, bucket splitting, ping-before-evict, refresh."""

from __future__ import annotations

import hashlib
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.dht.routing import (
    DHTID,
    ID_BITS,
    K_VALUE,
    MAX_ID,
    AddStatus,
    RoutingTable,
    serialize_key,
)
from peer.net.identity import Identity, PeerID

MADDRS = ["/ip4/127.0.0.1/tcp/1"]


def make_peer_id(rng: random.Random) -> PeerID:
    """A syntactically valid PeerID (sha2-256 multihash of random bytes); cheap to make."""
    return PeerID(bytes([0x12, 32]) + rng.randbytes(32))


def peers_where(rng: random.Random, predicate, count: int) -> list[PeerID]:
    found: list[PeerID] = []
    while len(found) < count:
        peer_id = make_peer_id(rng)
        if predicate(DHTID.from_peer_id(peer_id)):
            found.append(peer_id)
    return found


def brute_force_nearest(nodes, target: DHTID, k: int) -> list[PeerID]:
    return [n.peer_id for n in sorted(nodes, key=lambda n: n.node_id.xor_distance(target))[:k]]


def check_invariants(table: RoutingTable) -> None:
    assert table.buckets[0].lower == 0 and table.buckets[-1].upper == MAX_ID
    for left, right in zip(table.buckets, table.buckets[1:], strict=False):
        assert left.upper == right.lower
    for bucket in table.buckets:
        assert bucket.upper - bucket.lower == 2 ** (ID_BITS - bucket.depth)
        assert len(bucket.nodes) <= table.k
        assert len(bucket.replacements) <= table.replacement_cache_size
        for node in [*bucket.nodes.values(), *bucket.replacements.values()]:
            assert bucket.covers(node.node_id)
            assert node.node_id == DHTID.from_peer_id(node.peer_id)
        assert not set(bucket.nodes) & set(bucket.replacements)


# ----- ids -----


def test_node_id_is_blake2b_160_of_peer_id_bytes():
    peer_id = Identity.generate().peer_id
    expected = int.from_bytes(hashlib.blake2b(peer_id.to_bytes(), digest_size=20).digest(), "big")
    assert DHTID.from_peer_id(peer_id).value == expected


def test_key_id_hashes_the_msgpack_serialized_key():
    key = "run1_progress"
    assert serialize_key(key) == msgpack.packb(key, use_bin_type=True)
    assert DHTID.from_key(key) == DHTID.from_key_bytes(serialize_key(key))
    assert DHTID.from_key(key) != DHTID.from_key(b"run1_progress")  # str and bytes keys differ


def test_id_bytes_round_trip_and_xor_distance():
    rng = random.Random(1)
    a, b = DHTID.random(rng), DHTID.random(rng)
    assert DHTID.from_bytes(a.to_bytes()) == a and len(a.to_bytes()) == 20
    assert a.xor_distance(b) == b.xor_distance(a) == a.value ^ b.value
    assert a.xor_distance(a) == 0


def test_invalid_ids_are_refused_naming_the_parameter():
    with pytest.raises(ValueError, match="value"):
        DHTID(MAX_ID)
    with pytest.raises(ValueError, match="value"):
        DHTID(-1)
    with pytest.raises(TypeError, match="value"):
        DHTID(True)
    with pytest.raises(ValueError, match="data"):
        DHTID.from_bytes(b"\0" * 19)
    with pytest.raises(TypeError, match="peer_id"):
        DHTID.from_peer_id("12D3KooW")
    with pytest.raises(TypeError, match="msgpack"):
        DHTID.from_key(object())


def test_invalid_table_arguments_are_refused():
    with pytest.raises(ValueError, match="k"):
        RoutingTable(DHTID(0), k=0)
    with pytest.raises(TypeError, match="node_id"):
        RoutingTable(0)
    table = RoutingTable(DHTID(0))
    with pytest.raises(TypeError, match="maddrs"):
        table.add_or_update(make_peer_id(random.Random(0)), "/ip4/1.2.3.4/tcp/1", 0.0, is_server=True)
    with pytest.raises(ValueError, match="k"):
        table.nearest(DHTID(5), k=-1)


# ----- nearest -----


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    k=st.integers(1, 6),
    depth_modulo=st.integers(1, 6),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 199)), min_size=1, max_size=300),
    query_k=st.integers(0, 30),
)
def test_nearest_equals_brute_force_after_random_inserts_and_removes(seed, k, depth_modulo, ops, query_k):
    rng = random.Random(seed)
    pool = [make_peer_id(rng) for _ in range(200)]
    table = RoutingTable(DHTID.random(rng), k=k, depth_modulo=depth_modulo, replacement_cache_size=3)
    for step, (is_insert, index) in enumerate(ops):
        if is_insert:
            table.add_or_update(pool[index], MADDRS, float(step), is_server=True)
        else:
            table.remove(pool[index])
    check_invariants(table)
    nodes = list(table)
    assert len(nodes) == len(table) == len({node.peer_id for node in nodes})
    for _ in range(5):
        target = DHTID.random(rng)
        exclude = set(rng.sample(pool, 20))
        assert [n.peer_id for n in table.nearest(target, query_k)] == brute_force_nearest(
            nodes, target, query_k
        )
        expected = brute_force_nearest([n for n in nodes if n.peer_id not in exclude], target, query_k)
        assert [n.peer_id for n in table.nearest(target, query_k, exclude=exclude)] == expected


def test_nearest_finds_every_inserted_node_when_no_bucket_overflows():
    rng = random.Random(7)
    table = RoutingTable(DHTID.random(rng), k=K_VALUE)
    peers = [make_peer_id(rng) for _ in range(300)]
    for peer_id in peers:
        table.add_or_update(peer_id, MADDRS, 0.0, is_server=True)
    inserted = {peer_id for peer_id in peers if peer_id in table}
    assert len(inserted) == len(table) > 150  # many buckets split
    target = DHTID.random(rng)
    expected = sorted(inserted, key=lambda p: DHTID.from_peer_id(p).xor_distance(target))[:K_VALUE]
    assert [n.peer_id for n in table.nearest(target)] == expected
    # the nodes closest to our own id never get dropped: the own-id bucket always splits
    closest_to_self = sorted(peers, key=lambda p: DHTID.from_peer_id(p).xor_distance(table.node_id))
    assert all(peer_id in table for peer_id in closest_to_self[:K_VALUE])


# ----- splitting -----


def test_full_bucket_with_own_id_splits_and_far_bucket_at_modulo_depth_does_not():
    rng = random.Random(3)
    own = DHTID(1)  # own id in the lower half of the space
    table = RoutingTable(own, k=2, depth_modulo=1)  # classic Kademlia: only the own-id bucket splits
    far = peers_where(rng, lambda i: i.value >= MAX_ID // 2, 3)
    near = peers_where(rng, lambda i: i.value < MAX_ID // 2, 1)
    assert table.add_or_update(far[0], MADDRS, 0.0, is_server=True).status is AddStatus.ADDED
    assert table.add_or_update(far[1], MADDRS, 0.0, is_server=True).status is AddStatus.ADDED
    assert table.add_or_update(near[0], MADDRS, 0.0, is_server=True).status is AddStatus.ADDED
    assert len(table.buckets) == 2 and [b.depth for b in table.buckets] == [1, 1]
    result = table.add_or_update(far[2], MADDRS, 1.0, is_server=True)
    assert result.status is AddStatus.PENDING and len(table.buckets) == 2
    check_invariants(table)


def test_depth_modulo_lets_far_buckets_split_until_a_multiple_depth():
    rng = random.Random(4)
    table = RoutingTable(DHTID(0), k=1, depth_modulo=3)
    far = peers_where(rng, lambda i: i.value >= MAX_ID // 2, 40)
    for peer_id in far:
        table.add_or_update(peer_id, MADDRS, 0.0, is_server=True)
    far_buckets = [b for b in table.buckets if b.lower >= MAX_ID // 2]
    assert {b.depth for b in far_buckets} == {3}  # depths 1 and 2 split; depth 3 does not
    assert len(far_buckets) == 4


# ----- ping before evicting -----


def full_far_bucket(rng: random.Random, k: int = 2):
    table = RoutingTable(DHTID(0), k=k, depth_modulo=1, replacement_cache_size=2)
    far = peers_where(rng, lambda i: i.value >= MAX_ID // 2, k + 3)
    for t, peer_id in enumerate(far[:k]):
        table.add_or_update(peer_id, MADDRS, float(t), is_server=True)
    table.add_or_update(peers_where(rng, lambda i: i.value < MAX_ID // 2, 1)[0], MADDRS, 0, is_server=True)
    return table, far


def test_full_bucket_returns_the_least_recently_seen_node_to_ping():
    table, far = full_far_bucket(random.Random(5))
    result = table.add_or_update(far[2], MADDRS, 10.0, is_server=True)
    assert result.status is AddStatus.PENDING
    assert result.to_ping is not None and result.to_ping.peer_id == far[0]
    assert far[2] not in table
    assert far[2] in table.bucket_for(DHTID.from_peer_id(far[2])).replacements


def test_failed_ping_evicts_lrs_and_promotes_the_newest_replacement():
    table, far = full_far_bucket(random.Random(6))
    table.add_or_update(far[2], MADDRS, 10.0, is_server=True)
    table.add_or_update(far[3], MADDRS, 11.0, is_server=True)
    promoted = table.on_ping_failure(far[0])
    assert promoted is not None and promoted.peer_id == far[3]
    assert far[0] not in table and far[3] in table and far[2] not in table
    assert table.on_ping_failure(far[0]) is None  # already gone
    check_invariants(table)


def test_successful_ping_refreshes_lrs_and_keeps_newcomer_in_replacements():
    table, far = full_far_bucket(random.Random(8))
    table.add_or_update(far[2], MADDRS, 10.0, is_server=True)
    assert table.on_ping_success(far[0], 12.0)
    bucket = table.bucket_for(DHTID.from_peer_id(far[0]))
    assert list(bucket.nodes) == [far[1], far[0]] and bucket.nodes[far[0]].last_seen == 12.0
    assert far[2] in bucket.replacements
    result = table.add_or_update(far[3], MADDRS, 13.0, is_server=True)
    assert result.to_ping is not None and result.to_ping.peer_id == far[1]  # the next LRS
    assert not table.on_ping_success(far[4], 14.0)  # unknown peer


def test_replacement_cache_is_bounded_and_keeps_the_most_recent():
    table, far = full_far_bucket(random.Random(9))
    for t, peer_id in enumerate(far[2:5]):
        table.add_or_update(peer_id, MADDRS, 10.0 + t, is_server=True)
    bucket = table.bucket_for(DHTID.from_peer_id(far[0]))
    assert list(bucket.replacements) == [far[3], far[4]]


def test_removing_a_node_promotes_a_replacement():
    table, far = full_far_bucket(random.Random(10))
    table.add_or_update(far[2], MADDRS, 10.0, is_server=True)
    assert table.remove(far[1]) and far[2] in table and far[1] not in table
    assert not table.remove(far[1])


def test_update_moves_node_to_tail_with_new_addresses():
    table, far = full_far_bucket(random.Random(11))
    result = table.add_or_update(far[0], ["/ip4/10.0.0.1/tcp/5"], 20.0, is_server=True)
    assert result.status is AddStatus.UPDATED
    node = table.get(far[0])
    assert node is not None and node.maddrs == ("/ip4/10.0.0.1/tcp/5",) and node.last_seen == 20.0
    assert list(table.bucket_for(node.node_id).nodes)[-1] == far[0]


# ----- who may enter -----


def test_client_mode_peers_are_refused_and_dropped():
    rng = random.Random(12)
    table = RoutingTable(DHTID.random(rng))
    peer_id = make_peer_id(rng)
    assert table.add_or_update(peer_id, MADDRS, 0.0, is_server=False).status is AddStatus.REFUSED_CLIENT
    assert peer_id not in table and len(table) == 0
    table.add_or_update(peer_id, MADDRS, 1.0, is_server=True)
    assert peer_id in table
    assert table.add_or_update(peer_id, MADDRS, 2.0, is_server=False).status is AddStatus.REFUSED_CLIENT
    assert peer_id not in table


def test_own_id_is_refused():
    peer_id = make_peer_id(random.Random(13))
    table = RoutingTable(DHTID.from_peer_id(peer_id))
    assert table.add_or_update(peer_id, MADDRS, 0.0, is_server=True).status is AddStatus.REFUSED_SELF
    assert len(table) == 0


# ----- refresh -----


def test_buckets_not_refreshed_within_the_period_are_listed():
    rng = random.Random(14)
    table = RoutingTable(DHTID(0), k=2, depth_modulo=1, now=100.0)
    for peer_id in [make_peer_id(rng) for _ in range(30)]:
        table.add_or_update(peer_id, MADDRS, 100.0, is_server=True)
    assert len(table.buckets) > 2
    assert table.buckets_to_refresh(150.0, period=60.0) == []
    assert table.buckets_to_refresh(160.0, period=60.0) == table.buckets
    target = table.buckets[-1].random_id(rng)
    table.mark_refreshed(target, 155.0)
    stale = table.buckets_to_refresh(160.0, period=60.0)
    assert table.buckets[-1] not in stale and len(stale) == len(table.buckets) - 1


def test_random_id_lies_in_the_bucket_range():
    rng = random.Random(15)
    table = RoutingTable(DHTID(0), k=1, depth_modulo=1)
    for peer_id in [make_peer_id(rng) for _ in range(50)]:
        table.add_or_update(peer_id, MADDRS, 0.0, is_server=True)
    for bucket in table.buckets:
        for _ in range(20):
            assert bucket.covers(bucket.random_id(rng))
            assert table.bucket_for(bucket.random_id(rng)) is bucket
