"""The read path (validate, unwrap, merge) and the caching plan that follows a lookup; both pure."""

from __future__ import annotations

import random

import msgpack

from peer.dht.caching import MAX_CACHED_RECORDS, plan_caching
from peer.dht.protocol import FoundValue
from peer.dht.query import ClosestPeersQuery
from peer.dht.reader import Merged, RecordReader
from peer.dht.routing import DHTID, serialize_key
from peer.dht.storage import ValueWithExpiration
from peer.dht.validation import CompositeValidator, SignatureValidator, owner_marker, sign_value
from peer.net.identity import Identity, PeerID

NOW = 1_000.0


def packed(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def plain(value: object, expiration: float) -> FoundValue:
    return FoundValue(ValueWithExpiration(packed(value), expiration), None, ())


def dictionary(items: dict[str, tuple[object, float]]) -> FoundValue:
    entries = {serialize_key(s): ValueWithExpiration(packed(v), e) for s, (v, e) in items.items()}
    return FoundValue(None, entries, ())


def peer(rng: random.Random) -> PeerID:
    return PeerID(bytes([0x12, 32]) + rng.randbytes(32))


def reader_for(*keys: str, validator: CompositeValidator | None = None):
    invalid: list[tuple[PeerID, Exception]] = []
    ids = {DHTID.from_key(key): serialize_key(key) for key in keys}
    reader = RecordReader(validator or CompositeValidator(), ids, lambda src, e: invalid.append((src, e)))
    return reader, list(ids), invalid


def test_newest_plain_value_wins_and_keeps_its_wrapped_record() -> None:
    rng = random.Random(1)
    reader, (key_id,), _ = reader_for("k")
    a, b = peer(rng), peer(rng)
    merged = reader.merge(key_id, [(a, plain("old", NOW + 10)), (b, plain("new", NOW + 20))], NOW)
    assert merged.value == ValueWithExpiration("new", NOW + 20)
    assert merged.records == ((None, ValueWithExpiration(packed("new"), NOW + 20)),)


def test_dictionaries_merge_per_subkey_and_beat_older_plain_values() -> None:
    rng = random.Random(2)
    reader, (key_id,), _ = reader_for("k")
    a, b, c = peer(rng), peer(rng), peer(rng)
    candidates = [
        (a, dictionary({"x": (1, NOW + 5), "y": (2, NOW + 30)})),
        (b, dictionary({"x": (10, NOW + 15)})),
        (c, plain("plain", NOW + 20)),
    ]
    merged = reader.merge(key_id, candidates, NOW)
    assert merged.value is not None and merged.value.expiration_time == NOW + 30
    assert {s: item.value for s, item in merged.value.value.items()} == {"x": 10, "y": 2}
    assert sorted(merged.records) == sorted(
        [
            (serialize_key("x"), ValueWithExpiration(packed(10), NOW + 15)),
            (serialize_key("y"), ValueWithExpiration(packed(2), NOW + 30)),
        ]
    )
    # a plain value that expires after every subkey wins over the dictionary
    later = reader.merge(key_id, [*candidates, (c, plain("later", NOW + 40))], NOW)
    assert later.value == ValueWithExpiration("later", NOW + 40)


def test_expired_and_invalid_records_are_dropped_and_reported() -> None:
    rng = random.Random(3)
    reader, (key_id,), invalid = reader_for("k")
    a, b = peer(rng), peer(rng)
    garbage = FoundValue(ValueWithExpiration(b"\xc1", NOW + 50), None, ())  # 0xc1 is never valid msgpack
    merged = reader.merge(key_id, [(a, plain("gone", NOW - 1)), (b, garbage)], NOW)
    assert merged == Merged(None, ())
    assert [source for source, _ in invalid] == [b]
    assert reader.valid_part(key_id, garbage, NOW, b) is None
    assert len(invalid) == 1  # the same record is judged once per get


def test_a_signed_value_copied_under_another_key_is_dropped_even_beside_the_original() -> None:
    owner = Identity.generate()
    marker = owner_marker(owner.peer_id)
    good_key, copied_key = f"a{marker}", f"b{marker}"
    envelope = sign_value(owner, serialize_key(good_key), None, packed("mine"), NOW + 60)
    validator = CompositeValidator([SignatureValidator()])
    reader, (good_id, copied_id), invalid = reader_for(good_key, copied_key, validator=validator)
    holder = owner.peer_id
    found = FoundValue(ValueWithExpiration(envelope, NOW + 60), None, ())
    assert reader.merge(good_id, [(holder, found)], NOW).value == ValueWithExpiration("mine", NOW + 60)
    assert reader.merge(copied_id, [(holder, found)], NOW).value is None
    assert len(invalid) == 1


def answered_query(target: DHTID, answers: list[tuple[PeerID, bool]]) -> ClosestPeersQuery:
    """A finished CLOSEST query in which each peer answered about `target`, with or without a value."""
    query = ClosestPeersQuery([target], [p for p, _ in answers], now=0.0, k=len(answers), alpha=len(answers))
    step = query.next(0.0)
    assert {r.peer_id for r in step.requests} == {p for p, _ in answers}
    for peer_id, has_value in answers:
        values = {target: ValueWithExpiration(True, NOW + 60)} if has_value else {}
        query.on_success(peer_id, {}, values)
    assert query.next(0.0).finished
    return query


def test_caching_targets_the_nearest_responder_that_lacked_the_value() -> None:
    rng = random.Random(4)
    key = "cached"
    key_id = DHTID.from_key(key)
    peers = sorted((peer(rng) for _ in range(5)), key=lambda p: DHTID.from_peer_id(p).xor_distance(key_id))
    holders = {peers[0], peers[2]}
    query = answered_query(key_id, [(p, p in holders) for p in peers])
    assert query.responders(key_id) == tuple(peers)
    record = ValueWithExpiration(packed("v"), NOW + 60)
    found = {key_id: [(p, FoundValue(record, None, ())) for p in peers if p in holders]}
    merged = {key_id: (serialize_key(key), Merged(ValueWithExpiration("v", NOW + 60), ((None, record),)))}
    plan = plan_caching(query, found, merged)
    assert list(plan) == [peers[1]]
    [cached] = plan[peers[1]]
    assert (cached.key, cached.subkey, cached.value, cached.expiration_time) == (
        serialize_key(key),
        None,
        record.value,
        NOW + 60,
    )


def test_nothing_is_cached_when_every_responder_had_it_or_nothing_was_found_or_it_is_too_big() -> None:
    rng = random.Random(5)
    key_id = DHTID.from_key("k")
    a, b = peer(rng), peer(rng)
    record = ValueWithExpiration(packed("v"), NOW + 60)
    everyone = answered_query(key_id, [(a, True), (b, True)])
    found = {key_id: [(a, FoundValue(record, None, ())), (b, FoundValue(record, None, ()))]}
    merged = {key_id: (serialize_key("k"), Merged(ValueWithExpiration("v", NOW + 60), ((None, record),)))}
    assert plan_caching(everyone, found, merged) == {}
    lacking = answered_query(key_id, [(a, False), (b, False)])
    assert plan_caching(lacking, {}, {key_id: (serialize_key("k"), Merged(None, ()))}) == {}
    huge = tuple((serialize_key(i), record) for i in range(MAX_CACHED_RECORDS + 1))
    value = ValueWithExpiration({}, NOW + 60)
    assert plan_caching(lacking, {}, {key_id: (serialize_key("k"), Merged(value, huge))}) == {}
    small = plan_caching(lacking, {}, {key_id: (serialize_key("k"), Merged(value, huge[:3]))})
    nearest = min((a, b), key=lambda p: DHTID.from_peer_id(p).xor_distance(key_id))
    assert list(small) == [nearest] and len(small[nearest]) == 3
