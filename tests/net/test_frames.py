"""Multiplexer frames: the parser is total (fuzzed) and round-trips what the encoder writes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.errors import ProtocolViolationError
from peer.net import frames


def _encode(frame_type: int, flags: int, stream_id: int, value: int, payload: bytes = b"") -> bytes:
    length = value if frame_type in (frames.WINDOW_UPDATE, frames.PING) else len(payload)
    return frames.encode_header(frame_type, flags, stream_id, length) + payload


@given(st.binary(max_size=256))
@settings(max_examples=2000)
def test_parse_frames_never_raises_anything_but_a_protocol_violation(data):
    try:
        parsed = frames.parse_frames(data)
    except ProtocolViolationError:
        return
    assert parsed and sum(frames.HEADER_SIZE + len(frame.payload) for frame in parsed) == len(data)


_valid_frame = st.one_of(
    st.tuples(
        st.just(frames.DATA),
        st.sampled_from([0, 1, 2, 3]),
        st.integers(1, 2**32 - 1),
        st.just(0),
        st.binary(max_size=64),
    ),
    st.tuples(
        st.just(frames.WINDOW_UPDATE),
        st.just(0),
        st.integers(1, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.just(b""),
    ),
    st.tuples(
        st.just(frames.PING),
        st.sampled_from([0, frames.FLAG_ACK]),
        st.just(0),
        st.integers(0, 2**32 - 1),
        st.just(b""),
    ),
    st.tuples(
        st.sampled_from([frames.RESET]),
        st.just(0),
        st.integers(1, 2**32 - 1),
        st.just(0),
        st.binary(max_size=40).map(lambda reason: frames.CODE.pack(3) + reason),
    ),
    st.tuples(
        st.just(frames.GOAWAY),
        st.just(0),
        st.just(0),
        st.just(0),
        st.binary(max_size=40).map(lambda reason: frames.CODE.pack(14) + reason),
    ),
)


@given(st.lists(_valid_frame, min_size=1, max_size=8), st.data())
def test_valid_frames_round_trip_and_mutations_never_crash(specs, data):
    record = b"".join(_encode(*spec) for spec in specs)
    parsed = frames.parse_frames(record)
    assert [(f.type, f.flags, f.stream_id) for f in parsed] == [spec[:3] for spec in specs]
    for frame, spec in zip(parsed, specs, strict=True):
        assert bytes(frame.payload) == spec[4]
        if frame.type in (frames.WINDOW_UPDATE, frames.PING):
            assert frame.length == spec[3]
    # flip one byte anywhere: the parser either accepts it or raises a ProtocolViolationError
    position = data.draw(st.integers(0, len(record) - 1))
    mutated = bytearray(record)
    mutated[position] ^= data.draw(st.integers(1, 255))
    try:
        frames.parse_frames(bytes(mutated))
    except ProtocolViolationError:
        pass


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (b"", "empty record"),
        (b"\0\0\0\0\0", "truncated frame header"),
        (_encode(9, 0, 1, 0), "unknown frame type"),
        (_encode(frames.DATA, frames.FLAG_ACK, 1, 0), "not allowed"),
        (_encode(frames.DATA, 0, 0, 0, b"x"), "on stream 0"),
        (_encode(frames.PING, 0, 5, 1), "PING frame on stream 5"),
        (frames.encode_header(frames.DATA, 0, 1, 100) + b"short", "exceeds its record"),
        (_encode(frames.RESET, 0, 1, 0, b"ab"), "RESET payload"),
        (_encode(frames.GOAWAY, 0, 0, 0, frames.CODE.pack(1) + b"x" * 2000), "GOAWAY payload"),
    ],
)
def test_malformed_frames_name_the_problem(record, why):
    with pytest.raises(ProtocolViolationError, match=why):
        frames.parse_frames(record)


def test_reasons_are_truncated_and_decoded():
    payload = frames.encode_reason(8, "é" * 2000)
    assert len(payload) == frames.CODE.size + frames.MAX_REASON
    code, reason = frames.decode_reason(payload)
    assert code == 8 and reason.startswith("éé")
