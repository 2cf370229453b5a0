"""Moving one chunk between the wire and the flat vector, with few copies and one thread hop.

The event loop of a process carries every peer's traffic, so it does as little per byte as it can:

- **Receiving**: `recv_chunk` collects a chunk's payload as the views the transport decrypted it into
  (`RPCStream.iter_raw`; that memory is never reused), with no copy on the loop. One call in a worker
  thread (`ReceivedChunk.apply`) then joins the pieces with torch copies (which release the GIL),
  decodes them and adds or copies the values where they belong. An uncompressed chunk of the flat
  vector's dtype needs no decoding: it is joined straight into place (`ReceivedChunk.copy_into`).
- **Sending**: an uncompressed chunk is a view of the flat vector, encoded on the loop in O(1) time; a
  compressed one is encoded in a worker thread (`peer.compression.transfer.encode_tensor`).
- **Thread hops** are the expensive part of small work (waking a worker, then handing the GIL back
  and forth), so `offload` runs small work inline and every chunk costs at most one hop.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import torch

from peer.compression.base import decode
from peer.compression.serialization import DTYPE_NAMES, CodecID, EncodedTensor, tensor_to_buffer
from peer.errors import ProtocolViolationError, RPCCode
from peer.net.protocol import TensorHeader
from peer.net.rpc import RPCStream

OFFLOAD_NUMEL = 1 << 16  # work on at least this many elements goes to a worker thread
_TORCH_COPY_BYTES = 1 << 16  # pieces at least this large are copied by torch, without the GIL
MAX_BYTES_PER_ELEMENT = 8  # no codec's payload is larger than float64 values (plus a few bytes)


async def run_together(*coros: Coroutine[Any, Any, None]) -> None:
    """Run `coros` concurrently; the first failure cancels the others and is raised. Owns its tasks."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task in done and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def offload(numel: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call `fn` in a worker thread when the work is large (torch releases the GIL), else inline.

    A worker thread cannot be stopped, so a cancelled caller still waits for `fn` to return before
    it unwinds: nothing writes into a round's tensors after the round has returned.
    """
    if kwargs:
        fn = functools.partial(fn, **kwargs)
    if numel < OFFLOAD_NUMEL:
        return fn(*args)
    future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


class BufferPool:
    """Byte buffers to join compressed chunks in, and accumulators, reused from round to round."""

    def __init__(self, max_buffers: int = 64) -> None:
        self._bytes: list[bytearray] = []
        self._acc: dict[torch.dtype, torch.Tensor] = {}
        self._lock = threading.Lock()
        self.max_buffers = max_buffers

    def take(self, nbytes: int) -> bytearray:
        """A buffer of at least `nbytes` (thread-safe)."""
        with self._lock:
            for i, buffer in enumerate(self._bytes):
                if len(buffer) >= nbytes:
                    return self._bytes.pop(i)
        return bytearray(nbytes)

    def give(self, buffer: bytearray) -> None:
        with self._lock:
            if len(self._bytes) < self.max_buffers:
                self._bytes.append(buffer)

    def accumulator(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        acc = self._acc.get(dtype)
        if acc is None or acc.numel() < numel:
            acc = self._acc[dtype] = torch.empty(numel, dtype=dtype)
        return acc[:numel]


def join_pieces(pieces: list[memoryview], dest: memoryview) -> None:
    """Copy `pieces` one after another into `dest` (exactly filled); large pieces without the GIL."""
    target: torch.Tensor | None = None
    offset = 0
    for piece in pieces:
        size = len(piece)
        if size >= _TORCH_COPY_BYTES and not piece.readonly:
            if target is None:
                target = torch.frombuffer(dest, dtype=torch.uint8)
            target[offset : offset + size].copy_(torch.frombuffer(piece, dtype=torch.uint8))
        elif size:
            dest[offset : offset + size] = piece
        offset += size


@dataclass
class ReceivedChunk:
    """A chunk's header and its payload, still in the transport's record buffers."""

    header: TensorHeader
    pieces: list[memoryview]

    @property
    def numel(self) -> int:
        numel = 1
        for dim in self.header.shape:
            numel *= dim
        return numel

    def is_raw(self, dtype: torch.dtype) -> bool:
        """True when the payload is the values themselves, in `dtype` (no codec to run)."""
        header = self.header
        return (
            header.codec == CodecID.NONE
            and header.dtype == DTYPE_NAMES.get(dtype)
            and not header.meta
            and header.nbytes == self.numel * dtype.itemsize
        )

    def apply(self, pool: BufferPool, fn: Callable[[torch.Tensor], object]) -> None:
        """(worker thread) Decode the chunk and call `fn` with its values as a flat tensor (valid only
        during the call); ValueError if the chunk is malformed."""
        buffer = pool.take(self.header.nbytes)
        view = memoryview(buffer)[: self.header.nbytes]
        pieces, self.pieces = self.pieces, []
        try:
            join_pieces(pieces, view)
            header = self.header
            fields = {"codec": header.codec, "dtype": header.dtype, "shape": list(header.shape)}
            encoded = EncodedTensor.from_header_dict({**fields, "meta": header.meta}, view)
            values = decode(encoded).reshape(-1)
            if not values.is_floating_point():
                raise ValueError(f"{encoded.dtype} values cannot be averaged")
            fn(values)
        finally:
            del view
            pool.give(buffer)

    def copy_into(self, destination: torch.Tensor) -> None:
        """(worker thread) Join a raw chunk (`is_raw`) straight into `destination`, a contiguous CPU
        tensor of its dtype and size."""
        if not destination.is_contiguous() or destination.device.type != "cpu":
            raise ValueError("destination: expected a contiguous CPU tensor")
        pieces, self.pieces = self.pieces, []
        join_pieces(pieces, tensor_to_buffer(destination))


async def recv_chunk(rpc: RPCStream, expected_numel: int) -> ReceivedChunk:
    """Read one TENSOR message of `expected_numel` elements without copying its payload on the loop."""
    header = await rpc.recv_tensor_header()
    if header is None:
        raise ProtocolViolationError(f"{rpc.remote_peer_id} ended the call before the last chunk")
    chunk = ReceivedChunk(header, [])
    if chunk.numel != expected_numel:
        raise bad_chunk(rpc, f"expected {expected_numel} elements, got {chunk.numel}")
    if header.nbytes > MAX_BYTES_PER_ELEMENT * expected_numel + 64:  # refused before it is received
        raise bad_chunk(rpc, f"{header.nbytes} bytes for {expected_numel} elements")
    chunk.pieces = [piece async for piece in rpc.iter_raw(header.nbytes)]
    return chunk


def bad_chunk(rpc: RPCStream, reason: str) -> ProtocolViolationError:
    """Refuse the call of a peer that sent a malformed chunk; the error to raise."""
    rpc.cancel(RPCCode.INVALID_ARGUMENT, f"bad chunk: {reason}")
    return ProtocolViolationError(f"{rpc.remote_peer_id} sent a bad chunk: {reason}")
