"""Multiplexer frames: the units that share one secure connection among many streams.

A decrypted record holds one or more frames, each a 10-byte header and a payload:

    type: u8 | flags: u8 | stream_id: u32 | length: u32 | payload

    DATA (0)           payload = `length` bytes of stream data; flags SYN (opens), FIN (half-closes)
    WINDOW_UPDATE (1)  no payload; `length` = bytes the receiver grants the sender on that stream
    RESET (2)          payload = u32 error code + UTF-8 reason; aborts the stream both ways
    PING (3)           no payload; `length` = opaque value; flag ACK marks the answer; stream_id 0
    GOAWAY (4)         payload = u32 error code + UTF-8 reason; stream_id 0; the sender closes

All integers are big-endian. `parse_frames` is pure and total: any malformed input raises
`ProtocolViolationError` (fuzzed with hypothesis in tests/net/test_frames.py).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from peer.errors import ProtocolViolationError

HEADER = struct.Struct(">BBII")
HEADER_SIZE = HEADER.size
CODE = struct.Struct(">I")

DATA, WINDOW_UPDATE, RESET, PING, GOAWAY = range(5)
FRAME_TYPES = frozenset({DATA, WINDOW_UPDATE, RESET, PING, GOAWAY})
TYPE_NAMES = {DATA: "DATA", WINDOW_UPDATE: "WINDOW_UPDATE", RESET: "RESET", PING: "PING", GOAWAY: "GOAWAY"}

FLAG_SYN, FLAG_FIN, FLAG_ACK = 1, 2, 4
ALLOWED_FLAGS = {DATA: FLAG_SYN | FLAG_FIN, WINDOW_UPDATE: 0, RESET: 0, PING: FLAG_ACK, GOAWAY: 0}
MAX_REASON = 1024
MAX_STREAM_ID = 2**32 - 1
_NO_PAYLOAD = (WINDOW_UPDATE, PING)


class Frame(NamedTuple):
    type: int
    flags: int
    stream_id: int
    length: int  # payload size, or the value itself for WINDOW_UPDATE and PING
    payload: memoryview | bytes


def encode_header(frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    return HEADER.pack(frame_type, flags, stream_id, length)


def encode_reason(code: int, reason: str) -> bytes:
    """The payload of RESET and GOAWAY: a code and a reason cut to MAX_REASON bytes."""
    return CODE.pack(code) + reason.encode("utf-8", "replace")[:MAX_REASON]


def decode_reason(payload: memoryview | bytes) -> tuple[int, str]:
    if len(payload) < CODE.size:
        raise ProtocolViolationError("RESET/GOAWAY frame too short for its error code")
    (code,) = CODE.unpack_from(payload)
    return code, bytes(payload[CODE.size :]).decode("utf-8", "replace")


def parse_frames(plaintext: memoryview | bytes) -> list[Frame]:
    """Split one record's plaintext into frames; payloads are views into `plaintext` (no copies)."""
    view = plaintext if isinstance(plaintext, memoryview) else memoryview(plaintext)
    frames: list[Frame] = []
    offset, end = 0, len(view)
    if end == 0:
        raise ProtocolViolationError("empty record")
    while offset < end:
        if end - offset < HEADER_SIZE:
            raise ProtocolViolationError("truncated frame header")
        frame_type, flags, stream_id, length = HEADER.unpack_from(view, offset)
        offset += HEADER_SIZE
        if frame_type not in FRAME_TYPES:
            raise ProtocolViolationError(f"unknown frame type {frame_type}")
        if flags & ~ALLOWED_FLAGS[frame_type]:
            raise ProtocolViolationError(
                f"flags {flags:#x} are not allowed on a {TYPE_NAMES[frame_type]} frame"
            )
        if frame_type in (PING, GOAWAY):
            if stream_id != 0:
                raise ProtocolViolationError(f"{TYPE_NAMES[frame_type]} frame on stream {stream_id}")
        elif stream_id == 0:
            raise ProtocolViolationError(f"{TYPE_NAMES[frame_type]} frame on stream 0")
        if frame_type in _NO_PAYLOAD:
            frames.append(Frame(frame_type, flags, stream_id, length, b""))
            continue
        if length > end - offset:
            raise ProtocolViolationError(f"frame payload of {length} bytes exceeds its record")
        if frame_type in (RESET, GOAWAY) and not CODE.size <= length <= CODE.size + MAX_REASON:
            raise ProtocolViolationError(f"{TYPE_NAMES[frame_type]} payload of {length} bytes")
        frames.append(Frame(frame_type, flags, stream_id, length, view[offset : offset + length]))
        offset += length
    return frames
