"""Record validators: who may write a record, and what it may hold.

A `DHTRecord` is what travels: the msgpack-serialized key and subkey (`serialize_key`), the value
bytes and the expiration time. Validators are layers around the value:

- writer: `CompositeValidator.sign(record) -> bytes` wraps the value, innermost layer first;
- store path (the node asked to store): `check_store(record)` verifies every layer, outermost first;
- read path (the reader of a value): `check_read(record) -> bytes` verifies and unwraps every
  layer, outermost first, and returns the plain value.

Both checks raise `InvalidRecordError` (a `DHTError`) saying why. A higher `priority` is an outer
layer: `SignatureValidator` (10) wraps around `SchemaValidator` (0), so the schema sees the plain
value.

**Signed records.** A record whose key or subkey contains an owner marker ``[owner:<base58
PeerID>]`` (`owner_marker(peer_id)`) can be written only by that peer. Its stored value is the
msgpack envelope ``[1, value, signature]``, where the Ed25519 signature covers
``msgpack([SIGNATURE_DOMAIN, key, subkey, value, expiration_time])`` (key and subkey serialized,
subkey None for a plain value, expiration a float64), so a signed value cannot be moved to another
key or subkey or have its lifetime extended. The verifying key is the one inlined in the PeerID. A
key and subkey naming two different owners can never be written.

**Schemas.** `SchemaValidator({"run1_progress": ProgressModel})` requires that the value of every
key starting with ``run1_progress`` (a str key; the longest matching prefix wins) decodes from
msgpack and validates against the pydantic model; for a dictionary record, each subkey's value.
Extra fields are allowed unless the model forbids them (`model_config = ConfigDict(extra="forbid")`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import pydantic

from peer.dht.routing import serialize_key
from peer.errors import DHTError
from peer.net.identity import Identity, PeerID, verify_signature

SIGNATURE_DOMAIN = "hivemind-platform/dht-record/v1"
ENVELOPE_VERSION = 1
_OWNER_PATTERN = re.compile(rb"\[owner:([1-9A-HJ-NP-Za-km-z]+)\]")


class InvalidRecordError(DHTError):
    """A record was refused by a validator: unsigned, forged, tampered, or against its schema."""


@dataclass(frozen=True)
class DHTRecord:
    """A record as it travels: serialized key and subkey, value bytes, absolute expiration time."""

    key: bytes
    subkey: bytes | None
    value: bytes
    expiration_time: float

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes):
            raise TypeError(f"key must be bytes (serialized), not {type(self.key).__name__}")
        if self.subkey is not None and not isinstance(self.subkey, bytes):
            raise TypeError(f"subkey must be bytes (serialized) or None, not {type(self.subkey).__name__}")
        if not isinstance(self.value, bytes):
            raise TypeError(f"value must be bytes, not {type(self.value).__name__}")
        if not isinstance(self.expiration_time, (int, float)):
            raise TypeError(f"expiration_time must be a float, not {type(self.expiration_time).__name__}")

    @classmethod
    def create(cls, key: Any, subkey: Any, value: bytes, expiration_time: float) -> DHTRecord:
        """A record from an unserialized key and subkey (`subkey=None` for a plain value)."""
        if subkey is not None:
            check_subkey(subkey)
        serialized_subkey = None if subkey is None else serialize_key(subkey)
        return cls(serialize_key(key), serialized_subkey, value, float(expiration_time))


def check_subkey(subkey: object) -> None:
    """Raise TypeError unless `subkey` is a str, bytes or int (not a bool): the types every reader
    decodes to a distinct, hashable dictionary key (a list would not hash; 1, 1.0 and True would
    collide)."""
    if isinstance(subkey, bool) or not isinstance(subkey, (str, bytes, int)):
        raise TypeError(f"a DHT subkey must be a str, bytes or int, not {type(subkey).__name__}")


def decode_subkey(data: bytes) -> str | bytes | int:
    """A subkey as serialized by its writer, decoded; InvalidRecordError if it is not valid msgpack
    or not one of the subkey types (`check_subkey`)."""
    try:
        subkey = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise InvalidRecordError(f"the subkey is not valid msgpack: {e}") from None
    try:
        check_subkey(subkey)
    except TypeError as e:
        raise InvalidRecordError(str(e)) from None
    return subkey


class RecordValidator:
    """A layer around record values. The base class accepts everything and wraps nothing."""

    priority: int = 0

    def sign_value(self, record: DHTRecord) -> bytes:
        """Writer side: the value to send in place of `record.value`."""
        return record.value

    def validate(self, record: DHTRecord) -> None:
        """Raise `InvalidRecordError` if `record` (as stored, with this layer on) is not acceptable."""

    def strip_value(self, record: DHTRecord) -> bytes:
        """The value with this layer removed (call after `validate`)."""
        return record.value


def owner_marker(peer_id: PeerID) -> str:
    """The text to put in a key or subkey so that only `peer_id` may write the record."""
    if not isinstance(peer_id, PeerID):
        raise TypeError(f"peer_id must be a PeerID, not {type(peer_id).__name__}")
    return f"[owner:{peer_id.to_base58()}]"


def record_owner(record: DHTRecord) -> PeerID | None:
    """The owner named by the record's key or subkey markers; InvalidRecordError if ambiguous."""
    names = set(_OWNER_PATTERN.findall(record.key))
    if record.subkey is not None:
        names.update(_OWNER_PATTERN.findall(record.subkey))
    if not names:
        return None
    if len(names) > 1:
        raise InvalidRecordError("the record's key and subkey name more than one owner")
    try:
        return PeerID.from_base58(names.pop().decode())
    except ValueError as e:
        raise InvalidRecordError(f"the record's owner marker is not a valid PeerID: {e}") from None


def _signed_payload(key: bytes, subkey: bytes | None, value: bytes, expiration_time: float) -> bytes:
    return msgpack.packb([SIGNATURE_DOMAIN, key, subkey, value, float(expiration_time)], use_bin_type=True)


def sign_value(
    identity: Identity, key: bytes, subkey: bytes | None, value: bytes, expiration: float
) -> bytes:
    """The signed envelope of `value` for the record (serialized key, subkey, expiration)."""
    if not isinstance(identity, Identity):
        raise TypeError(f"identity must be an Identity, not {type(identity).__name__}")
    if not math.isfinite(expiration):
        raise ValueError(f"expiration must be a finite number, got {expiration}")
    signature = identity.sign(_signed_payload(key, subkey, value, expiration))
    return msgpack.packb([ENVELOPE_VERSION, value, signature], use_bin_type=True)


def _open_envelope(data: bytes) -> tuple[bytes, bytes]:
    try:
        envelope = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise InvalidRecordError(f"the signed value is not a msgpack envelope: {e}") from None
    if (
        not isinstance(envelope, list)
        or len(envelope) != 3
        or envelope[0] != ENVELOPE_VERSION
        or not isinstance(envelope[1], bytes)
        or not isinstance(envelope[2], bytes)
    ):
        raise InvalidRecordError("the signed value is not a [version 1, value, signature] envelope")
    return envelope[1], envelope[2]


class SignatureValidator(RecordValidator):
    """Records with an owner marker must carry their owner's signature (module docstring).

    `identity` signs the records this peer writes; without it, this validator only verifies.
    """

    priority = 10

    def __init__(self, identity: Identity | None = None):
        if identity is not None and not isinstance(identity, Identity):
            raise TypeError(f"identity must be an Identity or None, not {type(identity).__name__}")
        self.identity = identity

    @property
    def local_owner_marker(self) -> str:
        if self.identity is None:
            raise ValueError("this SignatureValidator has no identity")
        return owner_marker(self.identity.peer_id)

    def sign_value(self, record: DHTRecord) -> bytes:
        owner = record_owner(record)
        if owner is None:
            return record.value
        if self.identity is None or owner != self.identity.peer_id:
            raise InvalidRecordError(f"cannot sign a record owned by {owner}: it is not our identity")
        return sign_value(self.identity, record.key, record.subkey, record.value, record.expiration_time)

    def validate(self, record: DHTRecord) -> None:
        owner = record_owner(record)
        if owner is None:
            return
        value, signature = _open_envelope(record.value)
        try:
            public_key = owner.public_key()
        except ValueError as e:
            raise InvalidRecordError(f"the owner {owner} has no inlined Ed25519 key: {e}") from None
        payload = _signed_payload(record.key, record.subkey, value, record.expiration_time)
        if not verify_signature(public_key, signature, payload):
            raise InvalidRecordError(f"the record's signature is not {owner}'s")

    def strip_value(self, record: DHTRecord) -> bytes:
        if record_owner(record) is None:
            return record.value
        return _open_envelope(record.value)[0]


class SchemaValidator(RecordValidator):
    """Values under str keys with a given prefix must match a pydantic model (module docstring)."""

    priority = 0

    def __init__(self, schemas: Mapping[str, type[pydantic.BaseModel]]):
        for prefix, model in schemas.items():
            if not isinstance(prefix, str) or not prefix:
                raise ValueError(f"schema prefixes must be non-empty strings, got {prefix!r}")
            if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
                raise TypeError(f"the schema for {prefix!r} must be a pydantic model class")
        self._schemas = sorted(schemas.items(), key=lambda item: len(item[0]), reverse=True)

    def model_for(self, key: bytes) -> type[pydantic.BaseModel] | None:
        """The model for a serialized key: the one with the longest matching prefix, if any."""
        try:
            text = msgpack.unpackb(key, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            return None
        if not isinstance(text, str):
            return None
        return next((model for prefix, model in self._schemas if text.startswith(prefix)), None)

    def validate(self, record: DHTRecord) -> None:
        model = self.model_for(record.key)
        if model is None:
            return
        try:
            decoded = msgpack.unpackb(record.value, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise InvalidRecordError(f"the value is not msgpack, so not a {model.__name__}: {e}") from None
        try:
            model.model_validate(decoded)
        except pydantic.ValidationError as e:
            raise InvalidRecordError(f"the value does not match schema {model.__name__}: {e}") from None


class CompositeValidator:
    """Validators chained by priority (higher is outer): the one entry point for the DHT node."""

    def __init__(self, validators: Iterable[RecordValidator] = ()):
        self._validators: list[RecordValidator] = []
        self.extend(validators)

    def extend(self, validators: Iterable[RecordValidator]) -> None:
        for validator in validators:
            if not isinstance(validator, RecordValidator):
                raise TypeError(f"validators must be RecordValidators, not {type(validator).__name__}")
            self._validators.append(validator)
        self._validators.sort(key=lambda validator: validator.priority, reverse=True)  # outer first

    @property
    def validators(self) -> tuple[RecordValidator, ...]:
        """The validators, outermost first."""
        return tuple(self._validators)

    def sign(self, record: DHTRecord) -> bytes:
        """Writer: wrap the plain `record.value` in every layer, innermost first."""
        value = record.value
        for validator in reversed(self._validators):
            value = validator.sign_value(_with_value(record, value))
        return value

    def check_store(self, record: DHTRecord) -> None:
        """Store path: raise `InvalidRecordError` unless every layer of the wrapped value is valid."""
        self.check_read(record)

    def check_read(self, record: DHTRecord) -> bytes:
        """Read path: verify and unwrap every layer, outermost first; returns the plain value."""
        for validator in self._validators:
            validator.validate(record)
            record = _with_value(record, validator.strip_value(record))
        return record.value


def _with_value(record: DHTRecord, value: bytes) -> DHTRecord:
    return DHTRecord(record.key, record.subkey, value, record.expiration_time)
