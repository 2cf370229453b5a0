"""The progress schemas' bounds: every honest record fits, and a record beyond them (an epoch of 2^31,
a total of 2^63, a float that is not finite, a NUL in a peer's description) is refused by the run's
validators on store and on read, and skipped by readers."""

from __future__ import annotations

import math

import msgpack
import pydantic
import pytest

from peer import DHT, Identity, get_dht_time
from peer.dht import (
    CompositeValidator,
    DHTConfig,
    DHTRecord,
    InvalidRecordError,
    SignatureValidator,
    ValueWithExpiration,
    owner_marker,
)
from peer.optim import PeerRecord, ProgressRecord, run_validators
from peer.optim.progress import (
    MAX_ABS_LOSS,
    MAX_EPOCH,
    MAX_SAMPLES,
    MAX_SAMPLES_PER_SECOND,
    MAX_TIME,
    parse_progress,
)
from peer.utils.loop import run_coroutine

HONEST = {
    "epoch": 120,
    "samples_accumulated": 3000,
    "samples_per_second": 250.5,
    "loss": 2.25,
    "mini_steps": 40,
    "total_samples": 1_000_000,
    "time": 1_700_000_000.0,
    "client_mode": False,
}
LARGEST = {
    "epoch": MAX_EPOCH,
    "samples_accumulated": MAX_SAMPLES,
    "samples_per_second": MAX_SAMPLES_PER_SECOND,
    "loss": -3.0e38,  # the most negative float32
    "mini_steps": MAX_SAMPLES,
    "total_samples": MAX_SAMPLES,
    "time": MAX_TIME,
}
BEYOND = {
    "epoch 2^31": {"epoch": MAX_EPOCH + 1},
    "samples accumulated 2^53": {"samples_accumulated": MAX_SAMPLES + 1},
    "total 2^63": {"total_samples": 2**63},
    "total 2^64 - 1": {"total_samples": 2**64 - 1},
    "mini steps 2^64 - 1": {"mini_steps": 2**64 - 1},
    "speed beyond the bound": {"samples_per_second": MAX_SAMPLES_PER_SECOND * 2},
    "infinite speed": {"samples_per_second": math.inf},
    "NaN loss": {"loss": math.nan},
    "infinite loss": {"loss": -math.inf},
    "loss beyond float32": {"loss": MAX_ABS_LOSS},
    "time beyond the bound": {"time": MAX_TIME * 2},
    "negative time": {"time": -1.0},
    "NaN time": {"time": math.nan},
}


def test_honest_records_and_the_largest_allowed_values_validate():
    assert ProgressRecord.model_validate(HONEST).epoch == 120
    assert ProgressRecord.model_validate({**HONEST, **LARGEST}).total_samples == MAX_SAMPLES
    assert ProgressRecord.model_validate({**HONEST, "loss": None, "time": 0.0}).loss is None
    assert MAX_SAMPLES < 2**63 and MAX_EPOCH < 2**31  # the site's BigInteger and Integer columns


@pytest.mark.parametrize("fields", BEYOND.values(), ids=BEYOND.keys())
def test_a_value_beyond_the_bounds_is_refused(fields):
    with pytest.raises(pydantic.ValidationError):
        ProgressRecord.model_validate({**HONEST, **fields})


@pytest.mark.parametrize(
    "fields",
    [{"version": "0.1\x00"}, {"device": "cuda\n"}, {"username": "a\x7fb"}, {"reachability": "d" * 17}],
)
def test_peer_records_refuse_control_characters_and_long_text(fields):
    honest = {
        "version": "0.1.0",
        "reachability": "relayed",
        "device": "NVIDIA H100 80GB HBM3",
        "username": "ann",
    }
    assert PeerRecord.model_validate(honest).device == "NVIDIA H100 80GB HBM3"
    with pytest.raises(pydantic.ValidationError):
        PeerRecord.model_validate({**honest, **fields})


def _signed(identity: Identity, validators: CompositeValidator, value: dict) -> DHTRecord:
    """A record of `demo_progress` under the identity's own subkey, signed by it as a writer would."""
    plain = DHTRecord.create("demo_progress", owner_marker(identity.peer_id), msgpack.packb(value), 1e10)
    return DHTRecord(plain.key, plain.subkey, validators.sign(plain), plain.expiration_time)


@pytest.mark.parametrize("fields", [BEYOND["epoch 2^31"], BEYOND["total 2^64 - 1"]], ids=["epoch", "total"])
def test_the_run_validators_refuse_a_signed_record_beyond_the_bounds_on_store_and_read(fields):
    identity = Identity.generate()
    validators = CompositeValidator([SignatureValidator(identity), *run_validators("demo")])
    honest = _signed(identity, validators, HONEST)
    validators.check_store(honest)
    assert msgpack.unpackb(validators.check_read(honest)) == HONEST
    hostile = _signed(identity, validators, {**HONEST, **fields})  # validly signed by its owner
    with pytest.raises(InvalidRecordError, match="schema"):
        validators.check_store(hostile)
    with pytest.raises(InvalidRecordError, match="schema"):
        validators.check_read(hostile)


def test_a_dht_refuses_to_store_a_record_beyond_the_bounds():
    dht = DHT(record_validators=run_validators("demo"), config=DHTConfig(request_timeout=2.0))
    try:
        subkey = owner_marker(dht.peer_id)
        expiration = get_dht_time() + 60
        with pytest.raises(InvalidRecordError, match="schema"):
            dht.store("demo_progress", {**HONEST, "epoch": 2**31}, expiration, subkey=subkey)
        assert dht.store("demo_progress", HONEST, expiration, subkey=subkey)
        found = run_coroutine(dht.aget("demo_progress", latest=True))
        assert ProgressRecord.model_validate(found.value[subkey].value).epoch == HONEST["epoch"]
    finally:
        dht.shutdown()


def test_readers_skip_entries_beyond_the_bounds():
    honest, hostile = Identity.generate().peer_id, Identity.generate().peer_id
    value = {
        owner_marker(honest): ValueWithExpiration(HONEST, 1e10),
        owner_marker(hostile): ValueWithExpiration({**HONEST, "total_samples": 2**63}, 1e10),
    }
    assert list(parse_progress(value)) == [honest]
