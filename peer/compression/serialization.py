"""The wire form of a compressed tensor: `EncodedTensor`, its header, and zero-copy buffer helpers.

A tensor travels as a small **header** followed by a raw **payload**:

    header  = codec id, original dtype, shape, codec metadata (`meta`, a few bytes: scales, absmax)
    payload = the codec's packed values, one flat byte string the transport may cut into chunks

The header has two equivalent forms, so the transport can pick whichever frames best:

- `EncodedTensor.to_header_dict()`: a msgpack/protobuf-friendly dict
  `{"codec": int, "dtype": str, "shape": list[int], "meta": bytes}`; read it back with
  `EncodedTensor.from_header_dict(header, payload)`.
- `EncodedTensor.to_header_bytes()`: a compact little-endian binary header; read it back with
  `EncodedTensor.from_header_bytes(data, payload)`. Its layout (version 1):

      offset  size      field
      0       1         HEADER_VERSION (1)
      1       1         codec id (`CodecID`)
      2       1         dtype code (`DTYPE_CODES`)
      3       1         ndim (0..MAX_NDIM)
      4       8*ndim    shape, uint64 each
      ...     4         len(meta), uint32
      ...     len(meta) meta

The dtype names and codes, the codec ids and the header version are part of the wire protocol: never
renumber them, only append. All multi-byte numbers (meta fields and payload elements) are
little-endian, the byte order of every platform this project supports.

**Copies.** `tensor_to_buffer` exposes a CPU tensor's memory as a `memoryview` without copying (the
view keeps the tensor alive). `buffer_to_tensor` reads a writable buffer (`bytearray`, a writable
`memoryview`) in place; a read-only one (`bytes`) is copied once, because torch cannot wrap read-only
memory. Transports that receive into a `bytearray` therefore decode without any copy of the payload.

Malformed headers raise `ValueError` (naming what is wrong); the transport translates that into its
own protocol error at its boundary.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = [
    "DTYPE_CODES",
    "DTYPE_NAMES",
    "HEADER_VERSION",
    "MAX_NDIM",
    "Buffer",
    "CodecID",
    "EncodedTensor",
    "buffer_to_tensor",
    "tensor_to_buffer",
]

Buffer = bytes | bytearray | memoryview
"""Anything a payload or meta may be: a bytes-like object of unsigned bytes."""

HEADER_VERSION = 1
MAX_NDIM = 32
_MAX_NUMEL = 1 << 48


class CodecID(enum.IntEnum):
    """The codec of an `EncodedTensor`. The numbers are part of the wire protocol."""

    NONE = 0
    FLOAT16 = 1
    SCALED_FLOAT16 = 2
    UNIFORM_8BIT = 3
    BLOCKWISE_8BIT = 4


# wire name -> (wire code, torch dtype); append only
_DTYPES: dict[str, tuple[int, torch.dtype]] = {
    "float32": (0, torch.float32),
    "float16": (1, torch.float16),
    "bfloat16": (2, torch.bfloat16),
    "float64": (3, torch.float64),
    "uint8": (4, torch.uint8),
    "int8": (5, torch.int8),
    "int16": (6, torch.int16),
    "int32": (7, torch.int32),
    "int64": (8, torch.int64),
    "bool": (9, torch.bool),
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, (_, dtype) in _DTYPES.items()}
DTYPE_CODES: dict[torch.dtype, int] = {dtype: code for code, dtype in _DTYPES.values()}
_DTYPE_BY_NAME: dict[str, torch.dtype] = {name: dtype for name, (_, dtype) in _DTYPES.items()}
_DTYPE_BY_CODE: dict[int, torch.dtype] = {code: dtype for code, dtype in _DTYPES.values()}

_FIXED = struct.Struct("<BBBB")
_META_LEN = struct.Struct("<I")


@dataclasses.dataclass(frozen=True)
class EncodedTensor:
    """A tensor as a codec left it: everything a peer needs to decode it.

    `payload` may be a view of memory the encoder owns (see `tensor_to_buffer`); hold the
    `EncodedTensor` (or the view) until the payload is sent.
    """

    codec: CodecID
    dtype: torch.dtype
    shape: tuple[int, ...]
    meta: bytes
    payload: Buffer

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "codec", CodecID(self.codec))
        except ValueError:
            raise ValueError(f"codec: unknown codec id {self.codec!r}") from None
        if self.dtype not in DTYPE_NAMES:
            raise TypeError(f"dtype: {self.dtype!r} has no wire name")
        shape = tuple(self.shape)
        if len(shape) > MAX_NDIM:
            raise ValueError(f"shape: {len(shape)} dimensions, at most {MAX_NDIM} are allowed")
        numel = 1
        for dim in shape:
            if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
                raise ValueError(f"shape: dimensions must be non-negative ints, got {shape!r}")
            numel *= dim
        if numel > _MAX_NUMEL:
            raise ValueError(f"shape: {shape!r} has more than 2**48 elements")
        object.__setattr__(self, "shape", shape)
        if not isinstance(self.meta, (bytes, bytearray, memoryview)):
            raise TypeError(f"meta: expected bytes, got {type(self.meta)}")
        if not isinstance(self.meta, bytes):
            object.__setattr__(self, "meta", bytes(self.meta))
        if not isinstance(self.payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload: expected bytes, bytearray or memoryview, got {type(self.payload)}")

    @property
    def numel(self) -> int:
        """The number of elements of the decoded tensor."""
        numel = 1
        for dim in self.shape:
            numel *= dim
        return numel

    @property
    def payload_nbytes(self) -> int:
        """The payload's length in bytes."""
        return memoryview(self.payload).nbytes

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: binary header plus payload."""
        return _FIXED.size + 8 * len(self.shape) + _META_LEN.size + len(self.meta) + self.payload_nbytes

    def iter_payload_chunks(self, chunk_size: int) -> Iterator[memoryview]:
        """Zero-copy slices of the payload, each at most `chunk_size` bytes (none for an empty one)."""
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
        view = memoryview(self.payload).cast("B")
        for start in range(0, view.nbytes, chunk_size):
            yield view[start : start + chunk_size]

    def to_header_dict(self) -> dict[str, Any]:
        """The header as plain values: `{"codec": int, "dtype": str, "shape": list, "meta": bytes}`."""
        return {
            "codec": int(self.codec),
            "dtype": DTYPE_NAMES[self.dtype],
            "shape": list(self.shape),
            "meta": self.meta,
        }

    @classmethod
    def from_header_dict(cls, header: Mapping[str, Any], payload: Buffer) -> EncodedTensor:
        """Rebuild an `EncodedTensor` from `to_header_dict()`'s output and the received payload."""
        if not isinstance(header, Mapping):
            raise TypeError(f"header: expected a mapping, got {type(header)}")
        missing = {"codec", "dtype", "shape", "meta"} - set(header)
        if missing:
            raise ValueError(f"header: missing fields {sorted(missing)}")
        dtype = _DTYPE_BY_NAME.get(header["dtype"]) if isinstance(header["dtype"], str) else None
        if dtype is None:
            raise ValueError(f"header: unknown dtype {header['dtype']!r}")
        if not isinstance(header["shape"], (list, tuple)):
            raise ValueError(f"header: shape must be a list, got {type(header['shape'])}")
        if not isinstance(header["meta"], (bytes, bytearray, memoryview)):
            raise ValueError(f"header: meta must be bytes, got {type(header['meta'])}")
        if not isinstance(header["codec"], int):
            raise ValueError(f"header: codec must be an int, got {type(header['codec'])}")
        return cls(_codec_id(header["codec"]), dtype, tuple(header["shape"]), bytes(header["meta"]), payload)

    def to_header_bytes(self) -> bytes:
        """The header in the compact binary layout described in this module's docstring."""
        return b"".join(
            (
                _FIXED.pack(HEADER_VERSION, int(self.codec), DTYPE_CODES[self.dtype], len(self.shape)),
                struct.pack(f"<{len(self.shape)}Q", *self.shape),
                _META_LEN.pack(len(self.meta)),
                self.meta,
            )
        )

    @classmethod
    def from_header_bytes(cls, data: Buffer, payload: Buffer) -> EncodedTensor:
        """Rebuild an `EncodedTensor` from `to_header_bytes()`'s output and the received payload."""
        view = memoryview(data).cast("B")
        if view.nbytes < _FIXED.size:
            raise ValueError(f"header: {view.nbytes} bytes is too short")
        version, codec, dtype_code, ndim = _FIXED.unpack_from(view, 0)
        if version != HEADER_VERSION:
            raise ValueError(
                f"header: version {version} is not supported (this peer speaks {HEADER_VERSION})"
            )
        if dtype_code not in _DTYPE_BY_CODE:
            raise ValueError(f"header: unknown dtype code {dtype_code}")
        if ndim > MAX_NDIM:
            raise ValueError(f"header: {ndim} dimensions, at most {MAX_NDIM} are allowed")
        offset = _FIXED.size + 8 * ndim + _META_LEN.size
        if view.nbytes < offset:
            raise ValueError("header: truncated shape")
        shape = struct.unpack_from(f"<{ndim}Q", view, _FIXED.size)
        (meta_len,) = _META_LEN.unpack_from(view, offset - _META_LEN.size)
        if view.nbytes != offset + meta_len:
            raise ValueError(f"header: expected {offset + meta_len} bytes, got {view.nbytes}")
        meta = view[offset:].tobytes()
        return cls(_codec_id(codec), _DTYPE_BY_CODE[dtype_code], shape, meta, payload)


def _codec_id(value: int) -> CodecID:
    try:
        return CodecID(value)
    except ValueError:
        raise ValueError(f"header: unknown codec id {value!r}") from None


def tensor_to_buffer(tensor: torch.Tensor) -> memoryview:
    """The bytes of `tensor` as a flat unsigned-byte `memoryview`, without a copy where possible.

    A contiguous CPU tensor is exposed in place and the view keeps it alive; anything else is made
    contiguous on the CPU first (one copy). Writes to the tensor show through the view.
    """
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    tensor = tensor.contiguous()
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes == 0:
        return memoryview(b"")
    array = (ctypes.c_ubyte * nbytes).from_address(tensor.data_ptr())
    array._peer_owner = tensor  # type: ignore[attr-defined]  # keep the memory alive with the view
    return memoryview(array).cast("B")


def buffer_to_tensor(
    buffer: Buffer, dtype: torch.dtype, count: int, *, what: str = "payload"
) -> torch.Tensor:
    """A flat CPU tensor of `count` `dtype` elements over `buffer` (copied once if read-only).

    Raises `ValueError` naming `what` when the buffer's length is not exactly what is expected.
    """
    view = memoryview(buffer)
    if not view.c_contiguous:
        raise ValueError(f"{what}: the buffer must be C-contiguous")
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    itemsize = dtype.itemsize
    if view.nbytes != count * itemsize:
        raise ValueError(f"{what}: expected {count * itemsize} bytes, got {view.nbytes}")
    if count == 0:
        return torch.empty(0, dtype=dtype)
    if view.readonly:
        view = memoryview(bytearray(view))
    return torch.frombuffer(view, dtype=dtype, count=count)
