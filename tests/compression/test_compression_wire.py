"""The wire form: `EncodedTensor` headers (dict and bytes), pinned wire numbers, zero-copy buffers."""

from __future__ import annotations

import gc
import struct

import pytest
import torch

from peer.compression import CodecID, EncodedTensor, NoCompression, Uniform8BitQuantization, decode
from peer.compression.serialization import (
    DTYPE_CODES,
    DTYPE_NAMES,
    HEADER_VERSION,
    buffer_to_tensor,
    tensor_to_buffer,
)


def _sample() -> EncodedTensor:
    return EncodedTensor(
        CodecID.UNIFORM_8BIT, torch.bfloat16, (2, 3), struct.pack("<ff", -1.0, 0.5), bytes(6)
    )


def test_wire_numbers_are_pinned() -> None:
    assert {c.name: c.value for c in CodecID} == {
        "NONE": 0,
        "FLOAT16": 1,
        "SCALED_FLOAT16": 2,
        "UNIFORM_8BIT": 3,
        "BLOCKWISE_8BIT": 4,
    }
    assert {DTYPE_NAMES[d]: c for d, c in DTYPE_CODES.items()} == {
        "float32": 0,
        "float16": 1,
        "bfloat16": 2,
        "float64": 3,
        "uint8": 4,
        "int8": 5,
        "int16": 6,
        "int32": 7,
        "int64": 8,
        "bool": 9,
    }
    assert HEADER_VERSION == 1


def test_header_dict_round_trips_and_holds_plain_values() -> None:
    encoded = _sample()
    header = encoded.to_header_dict()
    assert header == {"codec": 3, "dtype": "bfloat16", "shape": [2, 3], "meta": encoded.meta}
    again = EncodedTensor.from_header_dict(header, encoded.payload)
    assert again == encoded


def test_header_bytes_have_the_documented_layout() -> None:
    encoded = _sample()
    data = encoded.to_header_bytes()
    assert data == bytes([1, 3, 2, 2]) + struct.pack("<QQI", 2, 3, 8) + encoded.meta
    assert EncodedTensor.from_header_bytes(data, encoded.payload) == encoded
    assert encoded.nbytes == len(data) + 6


@pytest.mark.parametrize("shape", [(), (0,), (1 << 40,), tuple(range(1, 9))])
def test_header_bytes_round_trip_any_shape(shape: tuple[int, ...]) -> None:
    encoded = EncodedTensor(CodecID.NONE, torch.float32, shape, b"", b"")
    assert EncodedTensor.from_header_bytes(encoded.to_header_bytes(), b"").shape == shape


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x00", "too short"),
        (bytes([2, 0, 0, 0]) + struct.pack("<I", 0), "version"),
        (bytes([1, 0, 77, 0]) + struct.pack("<I", 0), "dtype"),
        (bytes([1, 0, 0, 33]), "dimensions"),
        (bytes([1, 0, 0, 2]) + struct.pack("<Q", 3), "truncated"),
        (bytes([1, 0, 0, 0]) + struct.pack("<I", 4) + b"ab", "expected"),
        (bytes([1, 0, 0, 0]) + struct.pack("<I", 0) + b"trailing", "expected"),
        (bytes([1, 9, 0, 0]) + struct.pack("<I", 0), "codec"),
    ],
)
def test_malformed_header_bytes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EncodedTensor.from_header_bytes(data, b"")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"codec": 0, "dtype": "float32", "shape": [1]}, "missing"),
        ({"codec": 0, "dtype": "complex64", "shape": [1], "meta": b""}, "dtype"),
        ({"codec": 0, "dtype": "float32", "shape": 1, "meta": b""}, "shape"),
        ({"codec": 0, "dtype": "float32", "shape": [-1], "meta": b""}, "shape"),
        ({"codec": 0, "dtype": "float32", "shape": [1], "meta": "x"}, "meta"),
        ({"codec": "0", "dtype": "float32", "shape": [1], "meta": b""}, "codec"),
        ({"codec": 42, "dtype": "float32", "shape": [1], "meta": b""}, "codec"),
        ({"codec": 0, "dtype": "float32", "shape": [1 << 30, 1 << 30], "meta": b""}, "2\\*\\*48"),
    ],
)
def test_malformed_header_dicts_are_refused(header: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EncodedTensor.from_header_dict(header, b"")


def test_encoded_tensor_checks_its_fields() -> None:
    with pytest.raises(TypeError, match="dtype"):
        EncodedTensor(CodecID.NONE, torch.complex64, (1,), b"", bytes(8))
    with pytest.raises(TypeError, match="payload"):
        EncodedTensor(CodecID.NONE, torch.float32, (1,), b"", [0, 0, 0, 0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        EncodedTensor(CodecID.NONE, torch.float32, (1,) * 33, b"", b"")
    with pytest.raises(TypeError, match="meta"):
        EncodedTensor(CodecID.NONE, torch.float32, (1,), 5, bytes(4))  # type: ignore[arg-type]
    assert EncodedTensor(CodecID.NONE, torch.float32, (1,), bytearray(b"m"), bytes(4)).meta == b"m"


def test_payload_chunks_are_zero_copy_slices_that_reassemble() -> None:
    encoded = Uniform8BitQuantization().encode(torch.randn(1000))
    chunks = list(encoded.iter_payload_chunks(300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    assert chunks[0].obj is memoryview(encoded.payload).obj
    received = bytearray(b"".join(chunks))
    assert torch.equal(
        decode(EncodedTensor.from_header_dict(encoded.to_header_dict(), received)), decode(encoded)
    )
    with pytest.raises(ValueError, match="chunk_size"):
        next(encoded.iter_payload_chunks(0))


def test_tensor_to_buffer_is_a_live_view_that_keeps_the_tensor_alive() -> None:
    x = torch.arange(10, dtype=torch.float32)[2:]  # a storage offset
    view = tensor_to_buffer(x)
    assert view.readonly is False and view.nbytes == 32
    assert bytes(view[:4]) == struct.pack("<f", 2.0)
    x[0] = 7.0
    assert bytes(view[:4]) == struct.pack("<f", 7.0)
    del x
    gc.collect()
    torch.ones(1 << 16)  # reuse freed memory if the view had not kept it
    assert struct.unpack("<8f", view) == (7.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)


def test_tensor_to_buffer_copies_non_contiguous_tensors() -> None:
    x = torch.arange(6, dtype=torch.int16).view(2, 3).t()
    assert bytes(tensor_to_buffer(x)) == struct.pack("<6h", 0, 3, 1, 4, 2, 5)
    assert bytes(tensor_to_buffer(torch.empty(0))) == b""


def test_buffer_to_tensor_reads_writable_buffers_in_place_and_copies_read_only_ones() -> None:
    writable = bytearray(struct.pack("<2f", 1.0, 2.0))
    shared = buffer_to_tensor(writable, torch.float32, 2)
    writable[:4] = struct.pack("<f", 5.0)
    assert shared.tolist() == [5.0, 2.0]
    frozen = bytes(struct.pack("<2f", 1.0, 2.0))
    copied = buffer_to_tensor(frozen, torch.float32, 2)  # no "non-writable buffer" warning
    copied += 1
    assert copied.tolist() == [2.0, 3.0] and frozen == struct.pack("<2f", 1.0, 2.0)
    with pytest.raises(ValueError, match="meta: expected 8 bytes, got 7"):
        buffer_to_tensor(frozen[:7], torch.float32, 2, what="meta")
    assert buffer_to_tensor(memoryview(writable).cast("f"), torch.float32, 2).tolist() == [5.0, 2.0]


def test_no_compression_shares_memory_with_contiguous_input_and_writable_payload() -> None:
    x = torch.zeros(4)
    encoded = NoCompression().encode(x)
    x[1] = 3.0  # documented: the payload aliases the input
    received = bytearray(encoded.payload)
    restored = decode(EncodedTensor.from_header_dict(encoded.to_header_dict(), received))
    assert restored.tolist() == [0.0, 3.0, 0.0, 0.0]
    received[:4] = struct.pack("<f", 9.0)
    assert restored[0] == 9.0
