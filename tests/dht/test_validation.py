"""Record validators: owner signatures, pydantic schemas, and their chaining."""

from __future__ import annotations

import msgpack
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.dht.validation import (
    CompositeValidator,
    DHTRecord,
    InvalidRecordError,
    RecordValidator,
    SchemaValidator,
    SignatureValidator,
    owner_marker,
    record_owner,
    sign_value,
)
from peer.errors import DHTError
from peer.net.identity import Identity, PeerID

ALICE, MALLORY = Identity.generate(), Identity.generate()
EXPIRATION = 1000.0


class Progress(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    epoch: int
    samples_per_second: float


def progress(epoch: int = 3) -> bytes:
    return msgpack.packb({"epoch": epoch, "samples_per_second": 12.5})


def owned_record(value: bytes, owner: Identity = ALICE, key: str = "run1_progress") -> DHTRecord:
    return DHTRecord.create(key, f"{owner.peer_id}{owner_marker(owner.peer_id)}", value, EXPIRATION)


def signed(record: DHTRecord, identity: Identity = ALICE) -> DHTRecord:
    envelope = sign_value(identity, record.key, record.subkey, record.value, record.expiration_time)
    return DHTRecord(record.key, record.subkey, envelope, record.expiration_time)


def reject_on_both_paths(validator: CompositeValidator, record: DHTRecord, reason: str) -> None:
    with pytest.raises(InvalidRecordError, match=reason):
        validator.check_store(record)
    with pytest.raises(InvalidRecordError, match=reason):
        validator.check_read(record)


# ----- signatures -----


def test_owner_marker_names_the_peer_and_is_found_in_key_or_subkey():
    marker = owner_marker(ALICE.peer_id)
    assert marker == f"[owner:{ALICE.peer_id.to_base58()}]"
    assert record_owner(DHTRecord.create(f"key{marker}", None, b"", 1.0)) == ALICE.peer_id
    assert record_owner(DHTRecord.create("key", f"sub{marker}", b"", 1.0)) == ALICE.peer_id
    assert record_owner(DHTRecord.create("key", "sub", b"", 1.0)) is None


def test_signed_record_passes_store_and_read_and_read_unwraps_it():
    writer = CompositeValidator([SignatureValidator(ALICE)])
    record = owned_record(b"payload")
    wrapped = DHTRecord(record.key, record.subkey, writer.sign(record), record.expiration_time)
    assert wrapped.value != b"payload"
    reader = CompositeValidator([SignatureValidator()])  # verifying needs no identity
    reader.check_store(wrapped)
    assert reader.check_read(wrapped) == b"payload"


def test_record_signed_by_another_key_is_rejected_on_store_and_read():
    forged = signed(owned_record(b"payload"), identity=MALLORY)
    reject_on_both_paths(CompositeValidator([SignatureValidator()]), forged, "signature is not")


def test_tampered_value_expiration_or_subkey_is_rejected():
    validator = CompositeValidator([SignatureValidator()])
    good = signed(owned_record(b"payload"))
    _, value, signature = msgpack.unpackb(good.value)
    tampered = msgpack.packb([1, b"payl0ad", signature])
    reject_on_both_paths(validator, DHTRecord(good.key, good.subkey, tampered, EXPIRATION), "signature")
    extended = DHTRecord(good.key, good.subkey, good.value, EXPIRATION + 1)
    reject_on_both_paths(validator, extended, "signature")
    moved_key = DHTRecord.create("run2_progress", msgpack.unpackb(good.subkey), good.value, EXPIRATION)
    reject_on_both_paths(validator, moved_key, "signature")
    validator.check_store(good)  # and the untouched one still passes
    assert value == b"payload"


def test_unsigned_value_under_an_owner_marker_is_rejected():
    validator = CompositeValidator([SignatureValidator()])
    reject_on_both_paths(validator, owned_record(b"payload"), "envelope")
    reject_on_both_paths(validator, owned_record(msgpack.packb([1, "text", b"sig"])), "envelope")


def test_records_without_marker_pass_untouched():
    validator = CompositeValidator([SignatureValidator(ALICE)])
    record = DHTRecord.create("public_key", None, b"anything", EXPIRATION)
    assert validator.sign(record) == b"anything"
    validator.check_store(record)
    assert validator.check_read(record) == b"anything"


def test_a_peer_cannot_sign_for_another_owner():
    with pytest.raises(InvalidRecordError, match="cannot sign"):
        CompositeValidator([SignatureValidator(MALLORY)]).sign(owned_record(b"x"))
    with pytest.raises(InvalidRecordError, match="cannot sign"):
        CompositeValidator([SignatureValidator()]).sign(owned_record(b"x"))


def test_key_and_subkey_naming_two_owners_are_rejected():
    record = DHTRecord.create(
        f"k{owner_marker(ALICE.peer_id)}", f"s{owner_marker(MALLORY.peer_id)}", b"x", EXPIRATION
    )
    reject_on_both_paths(CompositeValidator([SignatureValidator()]), record, "more than one owner")


def test_malformed_owner_marker_is_rejected():
    record = DHTRecord.create("key[owner:1111]", None, b"x", EXPIRATION)
    reject_on_both_paths(CompositeValidator([SignatureValidator()]), record, "not a valid PeerID")
    hashed = PeerID(bytes([0x12, 32]) + bytes(32)).to_base58()  # a PeerID that inlines no key
    record = DHTRecord.create(f"key[owner:{hashed}]", None, msgpack.packb([1, b"x", b"s"]), EXPIRATION)
    reject_on_both_paths(CompositeValidator([SignatureValidator()]), record, "no inlined Ed25519 key")


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=200))
def test_garbage_values_are_refused_with_invalid_record_error_only(garbage):
    validator = CompositeValidator([SignatureValidator(), SchemaValidator({"run1_progress": Progress})])
    with pytest.raises(InvalidRecordError):
        validator.check_store(owned_record(garbage))
    with pytest.raises(InvalidRecordError):
        validator.check_read(DHTRecord.create("run1_progress", None, garbage, EXPIRATION))


# ----- schemas -----


def test_schema_accepts_matching_values_and_rejects_violations():
    validator = CompositeValidator([SchemaValidator({"run1_progress": Progress})])
    good = DHTRecord.create("run1_progress", None, progress(), EXPIRATION)
    validator.check_store(good)
    assert validator.check_read(good) == progress()
    bad = msgpack.packb({"epoch": "three", "samples_per_second": 1.0})
    reject_on_both_paths(validator, DHTRecord.create("run1_progress", None, bad, EXPIRATION), "Progress")
    extra = msgpack.packb({"epoch": 1, "samples_per_second": 1.0, "evil": True})
    reject_on_both_paths(validator, DHTRecord.create("run1_progress_x", None, extra, EXPIRATION), "Progress")
    reject_on_both_paths(validator, DHTRecord.create("run1_progress", None, b"\xc1", EXPIRATION), "msgpack")


def test_schema_validates_every_subkey_value():
    validator = CompositeValidator([SchemaValidator({"run1_progress": Progress})])
    validator.check_store(DHTRecord.create("run1_progress", "peerA", progress(), EXPIRATION))
    bad = msgpack.packb({"epoch": 1})
    record = DHTRecord.create("run1_progress", "peerB", bad, EXPIRATION)
    reject_on_both_paths(validator, record, "samples_per_second")


def test_schema_applies_to_prefixed_str_keys_only_and_the_longest_prefix_wins():
    class Other(pydantic.BaseModel):
        name: str

    validator = SchemaValidator({"run1": Other, "run1_progress": Progress})
    assert validator.model_for(DHTRecord.create("run1_progress_v2", None, b"", 1.0).key) is Progress
    assert validator.model_for(DHTRecord.create("run1_peers", None, b"", 1.0).key) is Other
    assert validator.model_for(DHTRecord.create("run2_progress", None, b"", 1.0).key) is None
    assert validator.model_for(DHTRecord.create(b"run1_progress", None, b"", 1.0).key) is None
    CompositeValidator([validator]).check_store(DHTRecord.create("unrelated", None, b"\xc1", 1.0))


def test_invalid_schema_arguments_are_refused():
    with pytest.raises(TypeError, match="pydantic"):
        SchemaValidator({"run1": dict})
    with pytest.raises(ValueError, match="prefix"):
        SchemaValidator({"": Progress})
    with pytest.raises(TypeError, match="RecordValidator"):
        CompositeValidator([object()])


# ----- chaining -----


def test_signature_wraps_outside_the_schema_whatever_the_order_given():
    schema = SchemaValidator({"run1_progress": Progress})
    writer = CompositeValidator([schema, SignatureValidator(ALICE)])
    assert [type(v) for v in writer.validators] == [SignatureValidator, SchemaValidator]
    record = owned_record(progress())
    wrapped = DHTRecord(record.key, record.subkey, writer.sign(record), EXPIRATION)
    reader = CompositeValidator([SignatureValidator(), schema])
    reader.check_store(wrapped)
    assert msgpack.unpackb(reader.check_read(wrapped)) == {"epoch": 3, "samples_per_second": 12.5}


def test_correctly_signed_but_schema_violating_value_is_rejected():
    bad = msgpack.packb({"epoch": "not a number", "samples_per_second": 1.0})
    wrapped = signed(owned_record(bad))
    validator = CompositeValidator([SignatureValidator(), SchemaValidator({"run1_progress": Progress})])
    reject_on_both_paths(validator, wrapped, "Progress")


def test_custom_validators_chain_by_priority_and_errors_are_dht_errors():
    calls = []

    class Tag(RecordValidator):
        def __init__(self, tag: bytes, priority: int):
            self.tag, self.priority = tag, priority

        def sign_value(self, record):
            calls.append(self.tag)
            return self.tag + record.value

        def validate(self, record):
            if not record.value.startswith(self.tag):
                raise InvalidRecordError(f"missing {self.tag!r}")

        def strip_value(self, record):
            return record.value[len(self.tag) :]

    validator = CompositeValidator([Tag(b"in:", 1), Tag(b"out:", 5)])
    wrapped = validator.sign(DHTRecord.create("k", None, b"v", 1.0))
    assert wrapped == b"out:in:v" and calls == [b"in:", b"out:"]
    assert validator.check_read(DHTRecord.create("k", None, wrapped, 1.0)) == b"v"
    with pytest.raises(DHTError, match="missing b'in:'"):
        validator.check_store(DHTRecord.create("k", None, b"out:v", 1.0))


def test_record_fields_are_type_checked():
    with pytest.raises(TypeError, match="key"):
        DHTRecord("key", None, b"", 1.0)
    with pytest.raises(TypeError, match="value"):
        DHTRecord(b"key", None, "v", 1.0)
    with pytest.raises(TypeError, match="identity"):
        sign_value("alice", b"k", None, b"v", 1.0)
