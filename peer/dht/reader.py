"""The read path of a get: validate what peers return, unwrap it, and merge it across replicas.

Every value found goes through the validators' `check_read` (signatures, schemas) before it can be
returned or end a search. Invalid records are dropped and counted (`on_invalid`). One
`RecordReader` serves one get; it checks each distinct record once, however many replicas hold it.

Merging keeps the newest: the plain value with the latest expiration, or a dictionary merged per
subkey (the latest expiration of each subkey wins); between a plain value and a dictionary, the one
that expires later wins. `Merged` also keeps the wrapped (still signed) records behind the result,
which is what the reader caches near itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import msgpack

from peer.dht.protocol import FoundValue
from peer.dht.routing import DHTID
from peer.dht.storage import ValueWithExpiration
from peer.dht.validation import CompositeValidator, DHTRecord, InvalidRecordError, decode_subkey
from peer.errors import DHTError
from peer.net.identity import PeerID

# what a reader does with a record that fails validation: (the peer that sent it, why)
OnInvalid = Callable[[PeerID, Exception], None]


@dataclass(frozen=True)
class Merged:
    """A key's newest valid value (unpacked, None if none) and the wrapped records it comes from:
    (serialized subkey or None, wrapped value with its expiration)."""

    value: ValueWithExpiration | None
    records: tuple[tuple[bytes | None, ValueWithExpiration[bytes]], ...]


class RecordReader:
    """Validates, unwraps and merges the records one get finds for `keys` (key id -> serialized key)."""

    def __init__(self, validator: CompositeValidator, keys: Mapping[DHTID, bytes], on_invalid: OnInvalid):
        self.validator = validator
        self.keys = dict(keys)
        self.on_invalid = on_invalid
        # verdicts by (key id, subkey, wrapped value, expiration): each distinct record is checked once
        self._verdicts: dict[tuple[DHTID, bytes | None, bytes, float], ValueWithExpiration | None] = {}

    def checked(
        self,
        key_id: DHTID,
        subkey: bytes | None,
        item: ValueWithExpiration[bytes],
        now: float,
        source: PeerID,
    ) -> ValueWithExpiration | None:
        """The unpacked value if the record is unexpired and valid; None (and reported) if not."""
        if item.expiration_time <= now:
            return None
        memo_key = (key_id, subkey, item.value, item.expiration_time)
        if memo_key in self._verdicts:
            return self._verdicts[memo_key]
        verdict: ValueWithExpiration | None = None
        try:
            record = DHTRecord(self.keys[key_id], subkey, item.value, item.expiration_time)
            plain = self.validator.check_read(record)
            if subkey is not None:
                decode_subkey(subkey)
            verdict = ValueWithExpiration(unpack(plain), item.expiration_time)
        except (InvalidRecordError, DHTError, TypeError, ValueError) as e:
            self.on_invalid(source, e)
        self._verdicts[memo_key] = verdict
        return verdict

    def valid_part(self, key_id: DHTID, found: FoundValue, now: float, source: PeerID) -> FoundValue | None:
        """`found` without the records that fail the read path; None if nothing valid is left."""
        value = found.value
        if value is not None and self.checked(key_id, None, value, now, source) is None:
            value = None
        dictionary = {
            subkey: item
            for subkey, item in (found.dictionary or {}).items()
            if self.checked(key_id, subkey, item, now, source) is not None
        }
        if value is None and not dictionary:
            return None
        return FoundValue(value, dictionary or None, found.nearest)

    def merge(self, key_id: DHTID, candidates: Iterable[tuple[PeerID, FoundValue]], now: float) -> Merged:
        """The newest valid plain value, or the dictionary merged per subkey (newest wins), unpacked."""
        best: tuple[ValueWithExpiration, ValueWithExpiration[bytes]] | None = None
        merged: dict[bytes, tuple[ValueWithExpiration, ValueWithExpiration[bytes]]] = {}
        for peer_id, found in candidates:
            if found.value is not None:
                item = self.checked(key_id, None, found.value, now, peer_id)
                if item is not None and (best is None or item.expiration_time > best[0].expiration_time):
                    best = (item, found.value)
            for subkey, wrapped in (found.dictionary or {}).items():
                item = self.checked(key_id, subkey, wrapped, now, peer_id)
                if item is not None and (
                    subkey not in merged or item.expiration_time > merged[subkey][0].expiration_time
                ):
                    merged[subkey] = (item, wrapped)
        dict_expiration = max((item.expiration_time for item, _ in merged.values()), default=None)
        if best is not None and (dict_expiration is None or best[0].expiration_time > dict_expiration):
            return Merged(best[0], ((None, best[1]),))
        if merged and dict_expiration is not None:
            value = {unpack(subkey): item for subkey, (item, _) in merged.items()}
            records = tuple((subkey, wrapped) for subkey, (_, wrapped) in merged.items())
            return Merged(ValueWithExpiration(value, dict_expiration), records)
        return Merged(None, ())


def expiration_of(found: FoundValue) -> float:
    """When what a peer returned expires: its plain value's expiration, or its latest subkey's."""
    if found.value is not None:
        return found.value.expiration_time
    return max((item.expiration_time for item in (found.dictionary or {}).values()), default=0.0)


def unpack(data: bytes) -> object:
    """Decode msgpack bytes from the network; DHTError if they are not valid msgpack."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise DHTError(f"a DHT value is not valid msgpack: {e}") from None
