"""A node's local record store: key id -> value bytes with an absolute expiration time.

DHT time is float seconds (`peer.get_dht_time()`, wall-clock based); every method takes `now`.

**Values.** A key holds either one plain value or a dictionary of subkey -> value, each subkey with
its own expiration; a dictionary's expiration is its latest subkey's. Values and subkeys are opaque
`bytes` here (the facade msgpack-encodes them; keys arrive as `DHTID`).

**Newer wins.** A store succeeds only if its expiration is later than the one it would replace:
a plain value replaces a dictionary only if it expires after every subkey, a subkey replaces a plain
value only if it expires after it. At equal expiration the larger value bytes win, so replicas
converge whatever order the writes arrive in (rewriting the same record is a successful no-op).

**Expiry.** Expired entries vanish: lazily on read, and in bulk with `remove_expired(now)`.

**Limits** (`StorageLimits`) refuse abuse with a `StoreStatus` that is falsy and says why:
value size (64 KiB), subkey size (1 KiB), time to live (7 days; stops a writer from pinning a key
forever, since newer expiration wins), subkeys per key (4096), entries per node (100,000; each plain
value or subkey counts as one) and total bytes per node (256 MiB). A full store refuses new entries
(`STORAGE_FULL`); a store built with `evict_when_full=True`, like the cache of values seen near
the reader, evicts the entries that expire soonest instead. The same class serves both.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from peer.dht.routing import DHTID

ValueT = TypeVar("ValueT")

MAX_VALUE_SIZE = 64 * 1024
MAX_SUBKEY_SIZE = 1024
MAX_TTL = 7 * 24 * 3600.0
MAX_SUBKEYS_PER_KEY = 4096
MAX_ENTRIES = 100_000
MAX_TOTAL_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ValueWithExpiration(Generic[ValueT]):
    """A value and the absolute DHT time at which it expires."""

    value: ValueT
    expiration_time: float


DictionaryValue = dict[bytes, ValueWithExpiration[bytes]]
StoredValue = ValueWithExpiration[bytes] | ValueWithExpiration[DictionaryValue]


class StoreStatus(enum.Enum):
    """The outcome of `DHTLocalStorage.store`: truthy only when the value was stored."""

    STORED = "stored"
    OUTDATED = "a value with a later expiration is already stored"
    EXPIRED = "the expiration time has already passed"
    INVALID_EXPIRATION = "the expiration time is not a finite number"
    TOO_FAR_IN_FUTURE = "the expiration time is further ahead than the storage allows"
    VALUE_TOO_LARGE = "the value is larger than the storage allows"
    SUBKEY_TOO_LARGE = "the subkey is larger than the storage allows"
    TOO_MANY_SUBKEYS = "the key already has as many subkeys as the storage allows"
    STORAGE_FULL = "the storage holds as many entries or bytes as it allows"

    def __bool__(self) -> bool:
        return self is StoreStatus.STORED

    @property
    def message(self) -> str:
        return self.value


@dataclass(frozen=True)
class StorageLimits:
    """Abuse limits of a `DHTLocalStorage`; `max_ttl=None` allows any finite expiration."""

    max_value_size: int = MAX_VALUE_SIZE
    max_subkey_size: int = MAX_SUBKEY_SIZE
    max_ttl: float | None = MAX_TTL
    max_subkeys_per_key: int = MAX_SUBKEYS_PER_KEY
    max_entries: int = MAX_ENTRIES
    max_total_bytes: int = MAX_TOTAL_BYTES

    def __post_init__(self) -> None:
        for name in ("max_value_size", "max_subkey_size", "max_subkeys_per_key", "max_entries"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.max_total_bytes, int) or self.max_total_bytes < 1:
            raise ValueError(f"max_total_bytes must be a positive int, got {self.max_total_bytes!r}")
        if self.max_ttl is not None and not self.max_ttl > 0:
            raise ValueError(f"max_ttl must be positive or None, got {self.max_ttl!r}")


def _entry_size(subkey: bytes | None, value: bytes) -> int:
    return len(value) + (len(subkey) if subkey is not None else 0)


def _is_newer(new: ValueWithExpiration[bytes], old: ValueWithExpiration[bytes]) -> bool:
    """Later expiration wins; at a tie the larger bytes win; an identical record counts as newer."""
    return (new.expiration_time, new.value) >= (old.expiration_time, old.value)


class DHTLocalStorage:
    """Records held by one DHT node, or its cache of records seen near it (module docstring)."""

    def __init__(self, limits: StorageLimits | None = None, *, evict_when_full: bool = False):
        if limits is not None and not isinstance(limits, StorageLimits):
            raise TypeError(f"limits must be a StorageLimits, not {type(limits).__name__}")
        self.limits = limits or StorageLimits()
        self.evict_when_full = evict_when_full
        self._records: dict[DHTID, ValueWithExpiration[bytes] | DictionaryValue] = {}
        # (expiration, tiebreak, key, subkey, entry): stale items are skipped when popped
        self._heap: list[tuple[float, int, DHTID, bytes | None, ValueWithExpiration[bytes]]] = []
        self._counter = itertools.count()
        self._num_entries = 0
        self._total_bytes = 0

    # ----- writes -----

    def store(
        self, key: DHTID, value: bytes, expiration_time: float, now: float, subkey: bytes | None = None
    ) -> StoreStatus:
        """Store `value` under `key` (and `subkey`, for a dictionary) until `expiration_time`."""
        self._check_types(key, value, subkey)
        refusal = self._check_limits(value, expiration_time, now, subkey)
        if refusal is not None:
            return refusal
        self._expire_key(key, now)
        new = ValueWithExpiration(value, float(expiration_time))
        current = self._records.get(key)
        replaced: list[tuple[bytes | None, ValueWithExpiration[bytes]]] = []
        if isinstance(current, dict):
            if subkey is None:
                if new.expiration_time <= max(item.expiration_time for item in current.values()):
                    return StoreStatus.OUTDATED
                replaced = list(current.items())
            elif subkey in current:
                if not _is_newer(new, current[subkey]):
                    return StoreStatus.OUTDATED
                replaced = [(subkey, current[subkey])]
            elif len(current) >= self.limits.max_subkeys_per_key:
                return StoreStatus.TOO_MANY_SUBKEYS
        elif current is not None:
            if subkey is None and not _is_newer(new, current):
                return StoreStatus.OUTDATED
            if subkey is not None and new.expiration_time <= current.expiration_time:
                return StoreStatus.OUTDATED
            replaced = [(None, current)]
        if not self._make_room(subkey, new, replaced, now):
            return StoreStatus.STORAGE_FULL
        self._put(key, subkey, new)
        return StoreStatus.STORED

    def remove_expired(self, now: float) -> int:
        """Drop every entry that expired at or before `now`; returns how many were dropped."""
        removed = 0
        while self._heap and self._heap[0][0] <= now:
            _, _, key, subkey, entry = heapq.heappop(self._heap)
            if self._is_current(key, subkey, entry):
                self._delete(key, subkey)
                removed += 1
        return removed

    # ----- reads -----

    def get(self, key: DHTID, now: float) -> StoredValue | None:
        """The unexpired value of `key`: bytes, or a fresh dict subkey -> value for a dictionary."""
        self._expire_key(key, now)
        current = self._records.get(key)
        if current is None:
            return None
        if isinstance(current, dict):
            latest = max(item.expiration_time for item in current.values())
            return ValueWithExpiration(dict(current), latest)
        return current

    def items(self, now: float) -> Iterator[tuple[DHTID, StoredValue]]:
        """Every unexpired record, as `get` returns them (for republishing and handover)."""
        self.remove_expired(now)
        for key in list(self._records):
            value = self.get(key, now)
            if value is not None:
                yield key, value

    def __len__(self) -> int:
        """The number of entries: each plain value or subkey counts as one (expired ones included)."""
        return self._num_entries

    def __contains__(self, key: object) -> bool:
        """Whether `key` has an entry (possibly expired, until `remove_expired` or a read drops it)."""
        return key in self._records

    @property
    def total_bytes(self) -> int:
        """The bytes of values and subkeys held."""
        return self._total_bytes

    # ----- internals -----

    @staticmethod
    def _check_types(key: DHTID, value: bytes, subkey: bytes | None) -> None:
        if not isinstance(key, DHTID):
            raise TypeError(f"key must be a DHTID, not {type(key).__name__}")
        if not isinstance(value, bytes):
            raise TypeError(f"value must be bytes, not {type(value).__name__}")
        if subkey is not None and not isinstance(subkey, bytes):
            raise TypeError(f"subkey must be bytes or None, not {type(subkey).__name__}")

    def _check_limits(
        self, value: bytes, expiration_time: float, now: float, subkey: bytes | None
    ) -> StoreStatus | None:
        if not isinstance(expiration_time, (int, float)) or not math.isfinite(expiration_time):
            return StoreStatus.INVALID_EXPIRATION
        if expiration_time <= now:
            return StoreStatus.EXPIRED
        if self.limits.max_ttl is not None and expiration_time > now + self.limits.max_ttl:
            return StoreStatus.TOO_FAR_IN_FUTURE
        if len(value) > self.limits.max_value_size:
            return StoreStatus.VALUE_TOO_LARGE
        if subkey is not None and len(subkey) > self.limits.max_subkey_size:
            return StoreStatus.SUBKEY_TOO_LARGE
        return None

    def _make_room(
        self,
        subkey: bytes | None,
        new: ValueWithExpiration[bytes],
        replaced: list[tuple[bytes | None, ValueWithExpiration[bytes]]],
        now: float,
    ) -> bool:
        """Ensure the store fits, evicting soonest-expiring entries if allowed; False if it cannot."""
        extra_entries = 1 - len(replaced)
        extra_bytes = _entry_size(subkey, new.value) - sum(_entry_size(s, e.value) for s, e in replaced)
        if self._fits(extra_entries, extra_bytes):
            return True
        self.remove_expired(now)
        kept = []  # the entries being replaced are already accounted for: never evict them
        while not self._fits(extra_entries, extra_bytes) and self.evict_when_full and self._heap:
            item = heapq.heappop(self._heap)
            _, _, victim_key, victim_subkey, entry = item
            if any(entry is old for _, old in replaced):
                kept.append(item)
            elif self._is_current(victim_key, victim_subkey, entry):
                self._delete(victim_key, victim_subkey)
        for item in kept:
            heapq.heappush(self._heap, item)
        return self._fits(extra_entries, extra_bytes)

    def _fits(self, extra_entries: int, extra_bytes: int) -> bool:
        return (
            self._num_entries + extra_entries <= self.limits.max_entries
            and self._total_bytes + extra_bytes <= self.limits.max_total_bytes
        )

    def _put(self, key: DHTID, subkey: bytes | None, new: ValueWithExpiration[bytes]) -> None:
        current = self._records.get(key)
        if subkey is None or not isinstance(current, dict):
            if current is not None:
                self._delete_key(key)
            self._records[key] = new if subkey is None else {subkey: new}
        else:
            if subkey in current:
                self._delete(key, subkey)
            self._records.setdefault(key, {})[subkey] = new  # type: ignore[index]
        self._num_entries += 1
        self._total_bytes += _entry_size(subkey, new.value)
        heapq.heappush(self._heap, (new.expiration_time, next(self._counter), key, subkey, new))
        if len(self._heap) > 2 * self._num_entries + 64:
            self._rebuild_heap()

    def _is_current(self, key: DHTID, subkey: bytes | None, entry: ValueWithExpiration[bytes]) -> bool:
        current = self._records.get(key)
        if subkey is None:
            return current is entry
        return isinstance(current, dict) and current.get(subkey) is entry

    def _delete(self, key: DHTID, subkey: bytes | None) -> None:
        current = self._records[key]
        if subkey is None or not isinstance(current, dict):
            self._delete_key(key)
            return
        entry = current.pop(subkey)
        self._num_entries -= 1
        self._total_bytes -= _entry_size(subkey, entry.value)
        if not current:
            del self._records[key]

    def _delete_key(self, key: DHTID) -> None:
        current = self._records.pop(key)
        items = current.items() if isinstance(current, dict) else [(None, current)]
        for subkey, entry in items:
            self._num_entries -= 1
            self._total_bytes -= _entry_size(subkey, entry.value)

    def _expire_key(self, key: DHTID, now: float) -> None:
        current = self._records.get(key)
        if isinstance(current, dict):
            for subkey in [s for s, item in current.items() if item.expiration_time <= now]:
                self._delete(key, subkey)
        elif current is not None and current.expiration_time <= now:
            self._delete_key(key)

    def _rebuild_heap(self) -> None:
        self._heap = [item for item in self._heap if self._is_current(item[2], item[3], item[4])]
        heapq.heapify(self._heap)


class NodeRecords:
    """Everything one DHT node holds: the records it stores as a replica (`storage`), its cache of
    values that readers left near it (`cache`, evicting when full), and the serialized key of every
    id it stores, so that it can republish them."""

    def __init__(self, limits: StorageLimits | None = None):
        self.storage = DHTLocalStorage(limits)
        self.cache = DHTLocalStorage(self.storage.limits, evict_when_full=True)
        self.key_bytes: dict[DHTID, bytes] = {}

    def store(
        self,
        key: bytes,
        value: bytes,
        expiration_time: float,
        now: float,
        subkey: bytes | None = None,
        *,
        in_cache: bool = False,
    ) -> StoreStatus:
        """Store a record whose serialized key is `key` (in the cache with `in_cache`)."""
        key_id = DHTID.from_key_bytes(key)
        target = self.cache if in_cache else self.storage
        status = target.store(key_id, value, expiration_time, now, subkey)
        if status and not in_cache:
            self.key_bytes[key_id] = key
        return status

    def latest(self, key_id: DHTID, now: float) -> StoredValue | None:
        """The stored or the cached value of `key_id`, whichever expires later."""
        stored, cached = self.storage.get(key_id, now), self.cache.get(key_id, now)
        if stored is None or cached is None:
            return stored or cached
        return stored if stored.expiration_time >= cached.expiration_time else cached

    def remove_expired(self, now: float) -> int:
        """Drop expired entries from the store and the cache; returns how many were dropped."""
        removed = self.storage.remove_expired(now) + self.cache.remove_expired(now)
        for key_id in [key_id for key_id in self.key_bytes if key_id not in self.storage]:
            del self.key_bytes[key_id]
        return removed

    def held(self, now: float) -> Iterator[tuple[bytes, bytes | None, ValueWithExpiration[bytes]]]:
        """Every unexpired stored record as (serialized key, serialized subkey or None, value)."""
        for key_id, stored in self.storage.items(now):
            key = self.key_bytes.get(key_id)
            if key is None:
                continue
            if isinstance(stored.value, dict):
                for subkey, item in stored.value.items():
                    yield key, subkey, item
            else:
                yield key, None, stored  # type: ignore[misc]
