"""Local storage: newer expiration wins, subkeys, expiry, abuse limits, the evicting cache, and a
node's records (store, cache and the keys it republishes)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.dht.routing import DHTID
from peer.dht.storage import (
    MAX_VALUE_SIZE,
    DHTLocalStorage,
    NodeRecords,
    StorageLimits,
    StoreStatus,
    ValueWithExpiration,
)

KEY, OTHER = DHTID(1), DHTID(2)


def plain(storage: DHTLocalStorage, key: DHTID, now: float):
    found = storage.get(key, now)
    return None if found is None else (found.value, found.expiration_time)


def test_store_and_get_a_plain_value():
    storage = DHTLocalStorage()
    status = storage.store(KEY, b"hello", 10.0, now=0.0)
    assert status is StoreStatus.STORED and status
    assert storage.get(KEY, 1.0) == ValueWithExpiration(b"hello", 10.0)
    assert storage.get(OTHER, 1.0) is None
    assert len(storage) == 1 and storage.total_bytes == 5


def test_newer_expiration_wins_and_older_is_refused():
    storage = DHTLocalStorage()
    assert storage.store(KEY, b"a", 10.0, now=0.0)
    assert storage.store(KEY, b"b", 20.0, now=0.0)
    status = storage.store(KEY, b"c", 15.0, now=0.0)
    assert status is StoreStatus.OUTDATED and not status and "later expiration" in status.message
    assert plain(storage, KEY, 0.0) == (b"b", 20.0)
    assert len(storage) == 1 and storage.total_bytes == 1


def test_equal_expiration_is_settled_by_value_bytes_and_rewrites_are_idempotent():
    storage = DHTLocalStorage()
    assert storage.store(KEY, b"m", 10.0, now=0.0)
    assert not storage.store(KEY, b"a", 10.0, now=0.0)
    assert storage.store(KEY, b"m", 10.0, now=0.0)  # the same record again
    assert storage.store(KEY, b"z", 10.0, now=0.0)
    assert plain(storage, KEY, 0.0) == (b"z", 10.0)


def test_expired_values_vanish_lazily_and_in_bulk():
    storage = DHTLocalStorage()
    storage.store(KEY, b"a", 10.0, now=0.0)
    storage.store(OTHER, b"b", 20.0, now=0.0)
    assert storage.get(KEY, 10.0) is None  # expiring at `now` counts as expired
    assert len(storage) == 1
    assert storage.remove_expired(19.9) == 0
    assert storage.remove_expired(20.0) == 1
    assert len(storage) == 0 and storage.total_bytes == 0 and list(storage.items(25.0)) == []


def test_storing_an_already_expired_value_is_refused():
    storage = DHTLocalStorage()
    assert storage.store(KEY, b"a", 5.0, now=5.0) is StoreStatus.EXPIRED
    assert storage.store(KEY, b"a", math.nan, now=0.0) is StoreStatus.INVALID_EXPIRATION
    assert storage.store(KEY, b"a", math.inf, now=0.0) is StoreStatus.INVALID_EXPIRATION
    assert len(storage) == 0


def test_subkeys_have_their_own_expiration():
    storage = DHTLocalStorage()
    assert storage.store(KEY, b"1", 10.0, now=0.0, subkey=b"peer1")
    assert storage.store(KEY, b"2", 20.0, now=0.0, subkey=b"peer2")
    assert not storage.store(KEY, b"old", 5.0, now=0.0, subkey=b"peer1")
    found = storage.get(KEY, 1.0)
    assert found is not None and found.expiration_time == 20.0
    assert found.value == {
        b"peer1": ValueWithExpiration(b"1", 10.0),
        b"peer2": ValueWithExpiration(b"2", 20.0),
    }
    later = storage.get(KEY, 15.0)
    assert later is not None and later.value == {b"peer2": ValueWithExpiration(b"2", 20.0)}
    assert len(storage) == 1 and storage.get(KEY, 25.0) is None and len(storage) == 0


def test_returned_dictionary_is_a_copy():
    storage = DHTLocalStorage()
    storage.store(KEY, b"1", 10.0, now=0.0, subkey=b"s")
    found = storage.get(KEY, 0.0)
    assert found is not None
    found.value.clear()
    assert storage.get(KEY, 0.0) is not None


def test_plain_value_and_dictionary_replace_each_other_only_when_newer():
    storage = DHTLocalStorage()
    storage.store(KEY, b"plain", 10.0, now=0.0)
    assert storage.store(KEY, b"s", 10.0, now=0.0, subkey=b"a") is StoreStatus.OUTDATED
    assert storage.store(KEY, b"s", 11.0, now=0.0, subkey=b"a")
    assert storage.store(KEY, b"t", 30.0, now=0.0, subkey=b"b")
    assert storage.store(KEY, b"plain2", 30.0, now=0.0) is StoreStatus.OUTDATED  # not after every subkey
    assert storage.store(KEY, b"plain3", 31.0, now=0.0)
    assert plain(storage, KEY, 0.0) == (b"plain3", 31.0)
    assert len(storage) == 1 and storage.total_bytes == len(b"plain3")


# ----- limits -----


def test_size_and_ttl_limits_refuse_with_a_reason():
    storage = DHTLocalStorage(StorageLimits(max_subkey_size=4, max_ttl=100.0))
    assert storage.store(KEY, b"x" * (MAX_VALUE_SIZE + 1), 10.0, now=0.0) is StoreStatus.VALUE_TOO_LARGE
    assert storage.store(KEY, b"x" * MAX_VALUE_SIZE, 10.0, now=0.0)
    assert storage.store(OTHER, b"x", 10.0, now=0.0, subkey=b"12345") is StoreStatus.SUBKEY_TOO_LARGE
    status = storage.store(OTHER, b"x", 100.5, now=0.0)
    assert status is StoreStatus.TOO_FAR_IN_FUTURE and "further ahead" in status.message
    assert storage.store(OTHER, b"x", 100.0, now=0.0)


def test_too_many_subkeys_is_refused_but_existing_subkeys_can_be_updated():
    storage = DHTLocalStorage(StorageLimits(max_subkeys_per_key=2))
    storage.store(KEY, b"1", 10.0, now=0.0, subkey=b"a")
    storage.store(KEY, b"2", 10.0, now=0.0, subkey=b"b")
    assert storage.store(KEY, b"3", 10.0, now=0.0, subkey=b"c") is StoreStatus.TOO_MANY_SUBKEYS
    assert storage.store(KEY, b"4", 11.0, now=0.0, subkey=b"b")


def test_full_storage_refuses_new_entries_but_accepts_updates_and_space_from_expiry():
    storage = DHTLocalStorage(StorageLimits(max_entries=2))
    storage.store(KEY, b"a", 10.0, now=0.0)
    storage.store(OTHER, b"b", 20.0, now=0.0)
    assert storage.store(DHTID(3), b"c", 30.0, now=0.0) is StoreStatus.STORAGE_FULL
    assert storage.store(KEY, b"a2", 15.0, now=0.0)  # replacing does not need room
    assert storage.store(DHTID(3), b"c", 30.0, now=16.0)  # KEY expired, which made room
    assert storage.get(OTHER, 16.0) is not None and len(storage) == 2


def test_total_bytes_limit():
    storage = DHTLocalStorage(StorageLimits(max_total_bytes=10))
    assert storage.store(KEY, b"12345678", 10.0, now=0.0)
    assert storage.store(OTHER, b"123", 10.0, now=0.0) is StoreStatus.STORAGE_FULL
    assert storage.store(KEY, b"1234567890", 11.0, now=0.0)  # replaces the 8 bytes: fits


def test_cache_evicts_the_soonest_expiring_entries_instead_of_refusing():
    cache = DHTLocalStorage(StorageLimits(max_entries=3), evict_when_full=True)
    for index, expiration in enumerate([30.0, 10.0, 20.0]):
        cache.store(DHTID(index), b"v", expiration, now=0.0)
    assert cache.store(DHTID(9), b"new", 40.0, now=0.0)
    assert cache.get(DHTID(1), 0.0) is None  # expired soonest, so evicted
    assert all(cache.get(DHTID(i), 0.0) is not None for i in (0, 2, 9))
    assert len(cache) == 3


def test_cache_never_evicts_the_entry_being_replaced():
    cache = DHTLocalStorage(StorageLimits(max_total_bytes=10), evict_when_full=True)
    cache.store(KEY, b"12345", 5.0, now=0.0)
    cache.store(OTHER, b"123", 50.0, now=0.0)
    assert cache.store(KEY, b"12345678", 6.0, now=0.0)  # needs 3 more bytes: evicts OTHER, not KEY
    assert cache.get(OTHER, 0.0) is None and plain(cache, KEY, 0.0) == (b"12345678", 6.0)
    assert cache.total_bytes == 8
    assert cache.remove_expired(7.0) == 1 and len(cache) == 0  # KEY is still reachable by expiry


def test_invalid_arguments_raise_type_errors_naming_the_parameter():
    storage = DHTLocalStorage()
    with pytest.raises(TypeError, match="key"):
        storage.store(b"key", b"v", 1.0, now=0.0)
    with pytest.raises(TypeError, match="value"):
        storage.store(KEY, "v", 1.0, now=0.0)
    with pytest.raises(TypeError, match="subkey"):
        storage.store(KEY, b"v", 1.0, now=0.0, subkey="s")
    with pytest.raises(ValueError, match="max_entries"):
        StorageLimits(max_entries=0)
    with pytest.raises(TypeError, match="limits"):
        DHTLocalStorage({"max_entries": 3})


# ----- against a reference model -----


def reference_store(model: dict, key, subkey, value, expiration, now) -> bool:
    """The documented rules, written naively."""
    current = {s: v for s, v in model.get(key, {}).items() if v[1] > now}
    if expiration <= now:
        return False
    if subkey is None:
        if None in current and (expiration, value) < (current[None][1], current[None][0]):
            return False
        if None not in current and current and expiration <= max(v[1] for v in current.values()):
            return False
        model[key] = {None: (value, expiration)}
        return True
    if None in current:
        if expiration <= current[None][1]:
            return False
        current = {}
    if subkey in current and (expiration, value) < (current[subkey][1], current[subkey][0]):
        return False
    current[subkey] = (value, expiration)
    model[key] = current
    return True


operation = st.tuples(
    st.integers(0, 3),  # key
    st.sampled_from([None, b"a", b"b", b"c"]),  # subkey
    st.sampled_from([b"x", b"y", b"zz"]),  # value
    st.integers(1, 30),  # expiration
    st.integers(0, 3),  # time step
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(operation, max_size=60))
def test_storage_agrees_with_a_reference_model(ops):
    storage, model, now = DHTLocalStorage(), {}, 0.0
    for key_index, subkey, value, expiration, time_step in ops:
        now += time_step
        key = DHTID(key_index)
        expected = reference_store(model, key, subkey, value, float(expiration), now)
        assert bool(storage.store(key, value, float(expiration), now, subkey=subkey)) == expected
        if now % 4 == 0:
            storage.remove_expired(now)
        for index in range(4):
            live = {s: v for s, v in model.get(DHTID(index), {}).items() if v[1] > now}
            found = storage.get(DHTID(index), now)
            if not live:
                assert found is None
            elif None in live:
                assert found == ValueWithExpiration(*live[None])
            else:
                assert found is not None
                assert found.value == {s: ValueWithExpiration(*v) for s, v in live.items()}
    storage.remove_expired(now)
    live_entries = [(s, v) for entries in model.values() for s, v in entries.items() if v[1] > now]
    assert len(storage) == len(live_entries)
    assert storage.total_bytes == sum(len(v[0]) + len(s or b"") for s, v in live_entries)


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(operation, max_size=80), max_entries=st.integers(1, 5))
def test_evicting_cache_keeps_its_limits_and_accounting(ops, max_entries):
    cache, now = DHTLocalStorage(StorageLimits(max_entries=max_entries), evict_when_full=True), 0.0
    for key_index, subkey, value, expiration, time_step in ops:
        now += time_step
        cache.store(DHTID(key_index), value, float(now + expiration), now, subkey=subkey)
        assert len(cache) <= max_entries
        entries = [
            (s, v) for _, found in cache.items(now) for s, v in _flatten(found.value, found.expiration_time)
        ]
        assert len(cache) == len(entries)
        assert cache.total_bytes == sum(len(v.value) + len(s or b"") for s, v in entries)


def _flatten(value, expiration):
    if isinstance(value, dict):
        return list(value.items())
    return [(None, ValueWithExpiration(value, expiration))]


def test_node_records_serve_the_later_of_store_and_cache_and_republish_only_the_store():
    records = NodeRecords(StorageLimits(max_ttl=None))
    stored_key, cached_key, both_key = b"\xa1s", b"\xa1c", b"\xa1b"
    assert records.store(stored_key, b"s", 50.0, now=0.0)
    assert records.store(cached_key, b"c", 50.0, now=0.0, in_cache=True)
    assert records.store(both_key, b"old", 20.0, now=0.0)
    assert records.store(both_key, b"new", 30.0, now=0.0, in_cache=True)
    assert records.store(both_key, b"a", 40.0, now=0.0, subkey=b"\xa1x") is StoreStatus.STORED
    for key, expected in ((stored_key, b"s"), (cached_key, b"c")):
        assert records.latest(DHTID.from_key_bytes(key), 1.0) == ValueWithExpiration(expected, 50.0)
    latest = records.latest(DHTID.from_key_bytes(both_key), 1.0)
    assert latest is not None and latest.expiration_time == 40.0  # the stored dictionary beats the cache
    assert sorted(records.held(1.0)) == [
        (both_key, b"\xa1x", ValueWithExpiration(b"a", 40.0)),
        (stored_key, None, ValueWithExpiration(b"s", 50.0)),
    ]
    assert set(records.key_bytes.values()) == {stored_key, both_key}  # cached keys are not republished
    assert records.remove_expired(45.0) == 2  # the dictionary's subkey and the cached "new"
    assert set(records.key_bytes.values()) == {stored_key}
    assert records.latest(DHTID.from_key_bytes(both_key), 46.0) is None
