"""A multiplexed stream: one ordered, flow-controlled byte stream inside a secure connection.

Flow control is per stream and credit-based. The sender may have at most `send_window` bytes that
the receiver has not acknowledged; the receiver grants more with WINDOW_UPDATE once the application
has read half a window. A stream therefore pins at most one window of memory on the receiver, and a
large transfer can put at most one window ahead of a small call in the shared send queue.

Each stream starts with `INITIAL_WINDOW` bytes of credit (a protocol constant); both sides then
grant up to their configured window. Writes of large buffers are zero-copy: `write` returns once
the data has been sealed into records, so the caller may reuse the buffer afterwards.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from peer.errors import ConnectionClosedError, ProtocolViolationError, RPCCode, rpc_error_from_code
from peer.net import frames

if TYPE_CHECKING:
    from peer.net.connection import Connection
    from peer.net.identity import PeerID

INITIAL_WINDOW = 256 * 1024
_COPY_BELOW = 64 * 1024  # smaller writes are copied and return at once


class Stream:
    """One stream of a `Connection`. Read with `read_exactly`/`read_some`, write with `write`."""

    def __init__(self, connection: Connection, stream_id: int, *, outbound: bool, window: int):
        self.connection = connection
        self.stream_id = stream_id
        self.outbound = outbound
        self._window = window
        self._inbox: deque[memoryview] = deque()
        self._inbox_bytes = 0
        self._recv_credit = INITIAL_WINDOW  # what the remote may still send us
        self._unacked = 0  # bytes read since our last WINDOW_UPDATE
        self._send_credit = INITIAL_WINDOW
        self._syn_sent = not outbound  # inbound streams were opened by the remote's SYN
        self._fin_sent = False
        self._fin_received = False
        self._error: Exception | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.on_remote_reset: Callable[[], object] | None = None  # e.g. cancel the handler's task

    # ---- the connection feeds these ---------------------------------------------------------

    def _on_data(self, payload: memoryview | bytes, fin: bool) -> None:
        """Queue received data; ProtocolViolationError when the remote overran its credit or wrote
        after its FIN."""
        size = len(payload)
        if self._fin_received and (size or fin):
            raise ProtocolViolationError(f"data on stream {self.stream_id} after its FIN")
        if size:
            if size > self._recv_credit:
                raise ProtocolViolationError(f"stream {self.stream_id} overran its flow-control window")
            self._recv_credit -= size
            self._inbox.append(payload if isinstance(payload, memoryview) else memoryview(payload))
            self._inbox_bytes += size
        if fin:
            self._fin_received = True
        self._readable.set()
        self._maybe_release()

    def _on_window_update(self, increment: int) -> None:
        self._send_credit += increment
        self._writable.set()

    def _on_reset(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._readable.set()
        self._writable.set()
        self.connection._forget_stream(self)

    def _grant_initial_window(self) -> None:
        extra = self._window - INITIAL_WINDOW
        if extra > 0:
            self._recv_credit += extra
            self.connection._queue_frame(frames.WINDOW_UPDATE, 0, self.stream_id, extra)

    # ---- reading ------------------------------------------------------------------------------

    @property
    def at_eof(self) -> bool:
        return self._fin_received and not self._inbox_bytes

    async def _wait_readable(self) -> None:
        while not self._inbox_bytes:
            if self._error is not None:
                raise self._error
            if self._fin_received:
                return
            self._readable.clear()
            await self._readable.wait()

    def _consumed(self, size: int) -> None:
        self._inbox_bytes -= size
        self._unacked += size
        if self._unacked >= self._window // 2 and not self._fin_received and self._error is None:
            self._recv_credit += self._unacked
            self.connection._queue_frame(frames.WINDOW_UPDATE, 0, self.stream_id, self._unacked)
            self._unacked = 0
        self._maybe_release()

    async def read_some(self, max_bytes: int = 1 << 30) -> memoryview:
        """Up to `max_bytes` of data as a view (empty at end of stream).

        The view is of memory the connection decrypted this data into and never reuses: it stays
        valid after later reads (it keeps its record alive). It is read-only for small records.
        """
        await self._wait_readable()
        if not self._inbox_bytes:
            return memoryview(b"")
        chunk = self._inbox[0]
        if len(chunk) > max_bytes:
            self._inbox[0] = chunk[max_bytes:]
            chunk = chunk[:max_bytes]
        else:
            self._inbox.popleft()
        self._consumed(len(chunk))
        return chunk

    async def read_exactly(self, size: int) -> bytes:
        """Exactly `size` bytes; `ConnectionClosedError` if the stream ends first."""
        if self._inbox and len(self._inbox[0]) >= size:
            return bytes(await self.read_some(size))
        out = bytearray(size)
        await self.readinto(memoryview(out))
        return bytes(out)

    async def readinto(self, buffer: memoryview) -> None:
        """Fill `buffer` completely from the stream (the one copy from the record into place)."""
        filled, size = 0, len(buffer)
        while filled < size:
            chunk = await self.read_some(size - filled)
            if not chunk:
                raise ConnectionClosedError(
                    f"stream ended after {filled} of {size} expected bytes (the remote closed it)"
                )
            buffer[filled : filled + len(chunk)] = chunk
            filled += len(chunk)

    # ---- writing ------------------------------------------------------------------------------

    async def write(self, data: bytes | bytearray | memoryview, *, fin: bool = False) -> None:
        """Send `data` (and half-close if `fin`), waiting for flow-control credit as needed."""
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if self._fin_sent:
            raise ConnectionClosedError("cannot write to a stream after closing it for writing")
        mutable = not isinstance(data, bytes)
        if mutable and len(view) < _COPY_BELOW:
            view, mutable = memoryview(bytes(view)), False
        max_payload = self.connection.max_frame_payload
        waiter: asyncio.Future[None] | None = None
        while True:
            if self._error is not None:
                raise self._error
            if view and self._send_credit <= 0:
                self._writable.clear()
                await self._writable.wait()
                continue
            size = min(len(view), self._send_credit, max_payload)
            last = size == len(view)
            flags = (frames.FLAG_FIN if fin and last else 0) | (0 if self._syn_sent else frames.FLAG_SYN)
            self._send_credit -= size
            waiter = self.connection._queue_frame(
                frames.DATA, flags, self.stream_id, size, view[:size], want_waiter=mutable and last
            )
            if not self._syn_sent:  # the remote learns of the stream from the SYN, then of its window
                self._syn_sent = True
                self._grant_initial_window()
            view = view[size:]
            if last:
                break
        if fin:
            self._fin_sent = True
            self._maybe_release()
        if waiter is not None:  # the caller may reuse its buffer once it is sealed into records
            await waiter

    async def close_write(self) -> None:
        """Half-close: tell the remote we will send nothing more."""
        if not self._fin_sent and self._error is None:
            await self.write(b"", fin=True)

    def reset(self, code: int = RPCCode.CANCELLED, reason: str = "") -> None:
        """Abort the stream both ways and tell the remote why."""
        if self._error is not None:
            return
        if self._syn_sent and not self.connection.closed:
            self.connection._queue_frame(
                frames.RESET, 0, self.stream_id, 0, frames.encode_reason(code, reason or "stream reset")
            )
        self._on_reset(rpc_error_from_code(code, reason or "stream reset locally"))

    def _reset_by_remote(self, code: int, reason: str) -> None:
        error = rpc_error_from_code(code, reason or "the remote reset the stream")
        self._on_reset(error)
        if self.on_remote_reset is not None:
            self.on_remote_reset()

    @property
    def is_released(self) -> bool:
        """True once the connection has forgotten this stream (both sides closed, or reset)."""
        return self.connection._streams.get(self.stream_id) is not self

    def release(self, reason: str) -> None:
        """Forget a stream whose call is over: reset it if either direction is still open, so
        neither side keeps it (and its slot under `max_streams`) forever."""
        if not self.is_released:
            self.reset(RPCCode.CANCELLED, reason)

    def _maybe_release(self) -> None:
        if self._fin_sent and self._fin_received and not self._inbox_bytes:
            self.connection._forget_stream(self)

    @property
    def remote_peer_id(self) -> PeerID | None:
        return self.connection.remote_peer_id

    def __repr__(self) -> str:
        return f"Stream({self.stream_id} with {self.connection.remote_peer_id})"
