"""The record layer: AES-GCM records with implicit sequence numbers."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peer.errors import ProtocolViolationError
from peer.net.noise import TAGLEN, nonce_bytes
from peer.net.record import LENGTH, LENGTH_SIZE, STREAMING_SEAL_SIZE, RecordOpener, RecordSealer

KEY = os.urandom(32)


def _split(record: bytes | bytearray) -> tuple[bytes, bytes]:
    return bytes(record[:LENGTH_SIZE]), bytes(record[LENGTH_SIZE:])


def test_in_place_sealing_matches_out_of_place_aes_gcm():
    pieces = [b"abc", memoryview(b"defgh"), bytearray(b"ij")]
    record = RecordSealer(KEY).seal(pieces, 10)
    (length,) = LENGTH.unpack_from(record)
    assert length == 10 + TAGLEN == len(record) - LENGTH_SIZE
    header, body = _split(record)
    assert body == AESGCM(KEY).encrypt(nonce_bytes(0), b"abcdefghij", header)


def test_records_open_in_order_both_ways():
    sealer, opener = RecordSealer(KEY), RecordOpener(KEY, 1 << 20)
    for index in range(3):
        payload = bytes([index]) * (100 + index)
        header, body = _split(sealer.seal([payload], len(payload)))
        opener.check_length(len(body))
        if index % 2:
            assert bytes(opener.open_in_place(header, bytearray(body))) == payload
        else:
            assert opener.open(header, body) == payload


def test_a_flipped_bit_fails_authentication():
    record = bytearray(RecordSealer(KEY).seal([b"payload"], 7))
    record[LENGTH_SIZE + 2] ^= 0x10
    header, body = _split(record)
    with pytest.raises(ProtocolViolationError, match="failed authentication"):
        RecordOpener(KEY, 1 << 20).open(header, body)


def test_a_replayed_or_reordered_record_fails_authentication():
    sealer, opener = RecordSealer(KEY), RecordOpener(KEY, 1 << 20)
    first, second = sealer.seal([b"one"], 3), sealer.seal([b"two"], 3)
    assert opener.open(*_split(first)) == b"one"
    with pytest.raises(ProtocolViolationError):
        opener.open(*_split(first))  # replayed
    opener2 = RecordOpener(KEY, 1 << 20)
    with pytest.raises(ProtocolViolationError):
        opener2.open(*_split(second))  # reordered


def test_the_length_prefix_is_authenticated():
    record = RecordSealer(KEY).seal([b"payload"], 7)
    header, body = _split(record)
    with pytest.raises(ProtocolViolationError):
        RecordOpener(KEY, 1 << 20).open(LENGTH.pack(len(body) + 1), body)
    assert header == LENGTH.pack(len(body))


@pytest.mark.parametrize("length", [0, TAGLEN, 4096 + TAGLEN + 1, 2**32 - 1])
def test_lengths_outside_the_limit_are_violations(length):
    with pytest.raises(ProtocolViolationError, match="outside"):
        RecordOpener(KEY, 4096).check_length(length)


def test_large_records_are_encrypted_straight_from_their_pieces():
    payload = os.urandom(STREAMING_SEAL_SIZE + 1000)
    view = memoryview(payload)
    pieces = [b"0123456789", view[:5000], view[5000:], b"tail"]
    size = sum(len(piece) for piece in pieces)
    sealer = RecordSealer(KEY)
    sealer.seal([b"x"], 1)  # the large record is the second: nonce 1
    header, body = _split(sealer.seal(pieces, size))
    assert body == AESGCM(KEY).encrypt(nonce_bytes(1), b"".join(bytes(p) for p in pieces), header)
    with pytest.raises(ValueError, match="size"):
        RecordSealer(KEY).seal(pieces, size - 4)


def test_a_recycled_record_buffer_is_reused_only_for_large_records():
    sealer, opener = RecordSealer(KEY), RecordOpener(KEY, 1 << 20)
    big, other = os.urandom(STREAMING_SEAL_SIZE * 2), os.urandom(STREAMING_SEAL_SIZE + 7)
    first = sealer.seal([big], len(big))
    assert opener.open(*_split(first)) == big
    sealer.recycle(first)
    small = sealer.seal([b"small"], 5)  # too small to take the spare
    assert opener.open(*_split(small)) == b"small"
    second = sealer.seal([other], len(other))  # fits in the spare: the same memory, a shorter record
    assert isinstance(second, memoryview) and second.obj is first
    assert opener.open(*_split(second)) == other
    third = sealer.seal([big], len(big))  # the spare is taken until recycled again: fresh memory
    assert third is not first and opener.open(*_split(third)) == big
