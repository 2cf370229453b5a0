"""A secure, multiplexed connection: the asyncio protocol under every pair of peers.

A connection lives in two phases on one TCP socket:

1. **Handshake**: raw bytes. `peer.net.handshake` reads and writes length-prefixed Noise messages
   through `read_raw`/`write_raw`, then installs the transport keys with `install_keys`.
2. **Records**: AES-GCM records (`peer.net.record`) holding multiplexer frames (`peer.net.frames`),
   dispatched to `Stream`s. The initiator opens odd stream ids, the responder even ones.

Reading uses `asyncio.BufferedProtocol`, so the kernel writes straight into one receive buffer (or,
for a large record, into the record's own buffer, decrypted there in place). Frame payloads handed to
streams are views of memory that is never reused: a small record is decrypted into fresh bytes, a
large one keeps its own buffer.
Writing queues frames and seals them into records once per event-loop iteration (`_flush`), so many
small frames share one record and one syscall; a large record's buffer is reused once the socket
has taken all of it. Anything malformed closes the connection with a GOAWAY
naming the reason; the peer keeps serving its other connections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from peer.errors import (
    AuthorizationError,
    ConnectionClosedError,
    ProtocolViolationError,
    RPCCode,
)
from peer.net import frames
from peer.net.config import TransportConfig
from peer.net.identity import PeerID
from peer.net.record import LENGTH, LENGTH_SIZE, RecordOpener, RecordSealer
from peer.net.stream import Stream

logger = logging.getLogger(__name__)

_ADMITTED = 0  # the value of the PING/ACK frame that admits the initiator
_RECV_BUFFER_SIZE = 256 * 1024  # the shared receive buffer; larger records get their own buffer
_LARGE_RECORD = 64 * 1024  # records at least this long skip the shared receive buffer
_MAX_RAW_BACKLOG = 70_000  # bytes buffered before the handshake completes: more than any message
_RECORD_HEADROOM = 256  # a record holds up to max_record_size of payload plus this much in frame headers


class Connection(asyncio.BufferedProtocol):
    """One TCP connection to one remote peer (see the module docstring)."""

    def __init__(self, config: TransportConfig, *, initiator: bool, hello: bytes):
        self.config = config
        self.initiator = initiator
        self.remote_peer_id: PeerID | None = None
        self.remote_address: str = "?"
        self.remote_token: bytes | None = None
        self.closed = False
        self.close_reason = ""
        self.max_frame_payload = config.max_record_size
        self.last_activity = time.monotonic()
        self._hello = hello
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray(_RECV_BUFFER_SIZE)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0
        self._raw_waiter: tuple[int, asyncio.Future[bytes]] | None = None
        self._large: bytearray | None = None
        self._large_view = memoryview(b"")
        self._large_filled = 0
        self._large_header = b""
        self._opener: RecordOpener | None = None
        self._sealer: RecordSealer | None = None
        self._send_limit = config.max_record_size + _RECORD_HEADROOM
        self._pending: list[bytes | memoryview] = []
        self._pending_size = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._flush_scheduled = False
        self._paused = False
        self._streams: dict[int, Stream] = {}
        self._next_stream_id = 1 if initiator else 2
        self._highest_remote_id = 0
        self._admission: asyncio.Future[None] = self._loop.create_future()
        self._closed_event = asyncio.Event()
        self._outbound_slots = asyncio.Semaphore(config.max_streams)
        self._outbound_open = 0
        self._on_stream: Callable[[Stream], Coroutine[Any, Any, None]] | None = None
        self._inbound_backlog: list[Stream] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keepalive: asyncio.TimerHandle | None = None
        self._ping_sent_at: float | None = None
        self.rtt: float | None = None
        self.idle_since: float | None = time.monotonic()  # when the last stream closed; None while busy

    # ---- asyncio protocol callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=self.config.write_buffer_high)
        peername = transport.get_extra_info("peername")
        if peername:
            self.remote_address = f"{peername[0]}:{peername[1]}"
        transport.write(bytes([len(self._hello)]) + self._hello)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._large is not None:  # a large record is read straight into its own buffer
            return self._large_view[self._large_filled :]
        if self._end == len(self._buffer):
            self._compact()
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.last_activity = time.monotonic()
        try:
            if self._large is not None:
                self._large_filled += nbytes
                if self._large_filled == len(self._large):
                    self._open_large_record()
                    self._process_records()
            elif self._opener is None:
                self._end += nbytes
                self._serve_raw_waiter()
            else:
                self._end += nbytes
                self._process_records()
        except ProtocolViolationError as e:
            self.close(RPCCode.INVALID_ARGUMENT, str(e))
        except Exception as e:  # a bug must cost this connection only, never the event loop
            logger.exception("closing connection to %s after an internal error", self.remote_address)
            self.close(RPCCode.INTERNAL, f"internal error: {type(e).__name__}")

    def eof_received(self) -> bool:
        self._shutdown("the remote closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown(f"connection lost: {exc}" if exc else "the connection closed")

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._schedule_flush()

    # ---- handshake phase -----------------------------------------------------------------------

    def write_raw(self, data: bytes) -> None:
        if self._transport is None or self.closed:
            raise ConnectionClosedError(f"connection to {self.remote_address} closed during the handshake")
        self._transport.write(data)

    async def read_raw(self, size: int) -> bytes:
        """Exactly `size` raw bytes (handshake phase only)."""
        if self.closed:
            raise ConnectionClosedError(f"{self.close_reason} (during the handshake)")
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._raw_waiter = (size, future)
        self._serve_raw_waiter()
        return await future

    def _serve_raw_waiter(self) -> None:
        if self._raw_waiter is None:
            if self._end - self._start > _MAX_RAW_BACKLOG:
                raise ProtocolViolationError("too much data before the handshake completed")
            return
        size, future = self._raw_waiter
        if self._end - self._start >= size:
            self._raw_waiter = None
            data = bytes(self._view[self._start : self._start + size])
            self._start += size
            if not future.done():
                future.set_result(data)

    def install_keys(self, send_key: bytes, recv_key: bytes, remote_max_record: int) -> None:
        """Switch to the record phase. Bytes already received are parsed as records."""
        self._sealer = RecordSealer(send_key)
        self._opener = RecordOpener(recv_key, self.config.max_record_size + _RECORD_HEADROOM)
        if remote_max_record:
            self.max_frame_payload = max(4096, min(self.config.max_record_size, remote_max_record))
        self._send_limit = self.max_frame_payload + _RECORD_HEADROOM
        self._loop.call_soon(self._process_buffered)

    def _process_buffered(self) -> None:
        if self.closed:
            return
        try:
            self._process_records()
        except ProtocolViolationError as e:
            self.close(RPCCode.INVALID_ARGUMENT, str(e))

    def admit(self) -> None:
        """(responder) Tell the initiator it was admitted; its streams are served from now on."""
        self._queue_frame(frames.PING, frames.FLAG_ACK, 0, _ADMITTED)
        if not self._admission.done():
            self._admission.set_result(None)

    def refuse(self, reason: str) -> None:
        """(responder) Tell the initiator why it was refused, then close."""
        self.close(RPCCode.PERMISSION_DENIED, reason)

    async def wait_admission(self) -> None:
        """(initiator) Wait for the responder's verdict; AuthorizationError if it refused us."""
        await self._admission

    # ---- record phase --------------------------------------------------------------------------

    def _compact(self) -> None:
        remaining = self._end - self._start
        if self._start:
            self._buffer[:remaining] = self._view[self._start : self._end].tobytes()
        self._start, self._end = 0, remaining

    def _process_records(self) -> None:
        opener = self._opener
        assert opener is not None
        view = self._view
        while not self.closed:
            available = self._end - self._start
            if available < LENGTH_SIZE:
                break
            (length,) = LENGTH.unpack_from(view, self._start)
            opener.check_length(length)
            body = self._start + LENGTH_SIZE
            if available < LENGTH_SIZE + length:
                if length >= _LARGE_RECORD:  # read the rest into the record's own buffer
                    self._large = bytearray(length)
                    self._large_view = memoryview(self._large)
                    self._large_filled = available - LENGTH_SIZE
                    self._large_view[: self._large_filled] = view[body : self._end]
                    self._large_header = bytes(view[self._start : body])
                    self._start = self._end = 0
                elif self._start + LENGTH_SIZE + length > len(self._buffer):
                    self._compact()
                break
            plaintext = opener.open(view[self._start : body], view[body : body + length])
            self._start = body + length
            self._handle_frames(plaintext)
        if self._start == self._end:
            self._start = self._end = 0

    def _open_large_record(self) -> None:
        assert self._opener is not None and self._large is not None
        record, self._large = self._large, None
        plaintext = self._opener.open_in_place(self._large_header, record)
        self._handle_frames(plaintext)

    def _handle_frames(self, plaintext: memoryview | bytes) -> None:
        for frame in frames.parse_frames(plaintext):
            if self.closed:  # a GOAWAY, or a violation, ended the connection mid-record
                return
            self._handle_frame(frame)

    def _handle_frame(self, frame: frames.Frame) -> None:
        kind = frame.type
        if not self._admission.done():
            if self.initiator:
                self._settle_admission(frame)
                return
            # the initiator waits for our verdict, so anything before it is an attempt to skip it
            raise ProtocolViolationError("the initiator sent frames before it was admitted")
        if kind == frames.DATA:
            stream = self._streams.get(frame.stream_id)
            if stream is None:
                stream = self._accept_stream(frame)
                if stream is None:
                    return
            stream._on_data(frame.payload, bool(frame.flags & frames.FLAG_FIN))
        elif kind == frames.WINDOW_UPDATE:
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                stream._on_window_update(frame.length)
        elif kind == frames.RESET:
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                code, reason = frames.decode_reason(frame.payload)
                stream._reset_by_remote(code, reason)
        elif kind == frames.PING:
            if frame.flags & frames.FLAG_ACK:
                if self._ping_sent_at is not None:
                    self.rtt = time.monotonic() - self._ping_sent_at
                    self._ping_sent_at = None
            else:
                self._queue_frame(frames.PING, frames.FLAG_ACK, 0, frame.length)
        elif kind == frames.GOAWAY:
            _code, reason = frames.decode_reason(frame.payload)
            self._shutdown(f"the remote closed the connection: {reason}")

    def _settle_admission(self, frame: frames.Frame) -> None:
        if frame.type == frames.PING and frame.flags & frames.FLAG_ACK and frame.length == _ADMITTED:
            self._admission.set_result(None)
        elif frame.type == frames.GOAWAY:
            _code, reason = frames.decode_reason(frame.payload)
            error = AuthorizationError(f"peer {self.remote_peer_id} refused us: {reason}")
            self._admission.set_exception(error)
            self._shutdown(f"refused by the remote: {reason}")
        else:
            raise ProtocolViolationError("the responder sent frames before admitting us")

    def _accept_stream(self, frame: frames.Frame) -> Stream | None:
        stream_id = frame.stream_id
        if stream_id % 2 == self._next_stream_id % 2:  # one of our own streams, already closed
            if stream_id < self._next_stream_id:
                return None
            raise ProtocolViolationError(f"the remote sent data on stream {stream_id}, which we never opened")
        if stream_id <= self._highest_remote_id:
            return None  # a late frame for a stream we already closed
        if not frame.flags & frames.FLAG_SYN:
            raise ProtocolViolationError(f"data on unopened stream {stream_id}")
        self._highest_remote_id = stream_id
        if len(self._streams) - self._outbound_open >= self.config.max_streams:
            self._queue_frame(
                frames.RESET,
                0,
                stream_id,
                0,
                frames.encode_reason(
                    RPCCode.RESOURCE_EXHAUSTED,
                    f"too many concurrent streams (limit {self.config.max_streams})",
                ),
            )
            return None
        stream = Stream(self, stream_id, outbound=False, window=self.config.stream_window)
        self._streams[stream_id] = stream
        self.idle_since = None
        stream._grant_initial_window()
        if self._on_stream is None:
            self._inbound_backlog.append(stream)
        else:
            self._spawn_stream_task(stream)
        return stream

    # ---- streams -------------------------------------------------------------------------------

    async def open_stream(self) -> Stream:
        """A new outbound stream (waiting while `max_streams` of ours are open); the SYN goes out
        with its first write."""
        await self._outbound_slots.acquire()
        if self.closed:
            self._outbound_slots.release()
            raise ConnectionClosedError(f"connection to {self.remote_peer_id} is closed: {self.close_reason}")
        stream_id = self._next_stream_id
        if stream_id > frames.MAX_STREAM_ID:
            self._outbound_slots.release()
            self.close(RPCCode.UNAVAILABLE, "stream ids exhausted")
            raise ConnectionClosedError("stream ids exhausted on this connection; reconnect")
        self._next_stream_id += 2
        stream = Stream(self, stream_id, outbound=True, window=self.config.stream_window)
        self._streams[stream_id] = stream
        self._outbound_open += 1
        self.idle_since = None
        return stream

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    def _forget_stream(self, stream: Stream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            if stream.outbound:
                self._outbound_open -= 1
                self._outbound_slots.release()
            if not self._streams:
                self.idle_since = time.monotonic()

    def _spawn_stream_task(self, stream: Stream) -> None:
        assert self._on_stream is not None
        task = self._loop.create_task(self._on_stream(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- sending -------------------------------------------------------------------------------

    def _queue_frame(
        self,
        frame_type: int,
        flags: int,
        stream_id: int,
        length: int,
        payload: bytes | memoryview = b"",
        *,
        want_waiter: bool = False,
    ) -> asyncio.Future[None] | None:
        """Queue one frame; it is sealed into a record at the end of this event-loop iteration.

        With `want_waiter`, returns a future that resolves once the payload has been sealed (copied),
        so the caller may reuse its buffer.
        """
        if self.closed:
            raise ConnectionClosedError(f"connection to {self.remote_peer_id} is closed: {self.close_reason}")
        if frame_type in (frames.DATA, frames.RESET, frames.GOAWAY):
            length = len(payload)
        self._pending.append(frames.encode_header(frame_type, flags, stream_id, length))
        if payload:
            self._pending.append(payload)
        self._pending_size += frames.HEADER_SIZE + len(payload)
        waiter = None
        if want_waiter:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
        self._schedule_flush()
        return waiter

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed or self._transport is None or self._sealer is None:
            return
        pending, limit = self._pending, self._send_limit
        index = 0
        while index < len(pending) and not self._paused:
            record_pieces: list[bytes | memoryview] = []
            size = 0
            while index < len(pending):
                header = pending[index]
                payload_size = (
                    frames.HEADER.unpack_from(header)[3]
                    if header[0] in (frames.DATA, frames.RESET, frames.GOAWAY)
                    else 0
                )
                frame_size = frames.HEADER_SIZE + payload_size
                if size and size + frame_size > limit:
                    break
                record_pieces.append(header)
                index += 1
                if payload_size:
                    record_pieces.append(pending[index])
                    index += 1
                size += frame_size
            record = self._sealer.seal(record_pieces, size)
            self._transport.write(record)
            if not self._transport.get_write_buffer_size():  # the socket took it all: reuse it
                self._sealer.recycle(record)
            self._pending_size -= size
        del pending[:index]
        if not pending:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # ---- lifecycle -----------------------------------------------------------------------------

    async def run(self, on_stream: Callable[[Stream], Coroutine[Any, Any, None]]) -> None:
        """Serve inbound streams with `on_stream` until the connection closes; owns those tasks."""
        self._on_stream = on_stream
        backlog, self._inbound_backlog = self._inbound_backlog, []
        for stream in backlog:
            self._spawn_stream_task(stream)
        self._arm_keepalive()
        try:
            await self._closed_event.wait()
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    def _arm_keepalive(self) -> None:
        if not self.closed:
            self._keepalive = self._loop.call_later(self.config.keepalive_interval / 2, self._check_keepalive)

    def _check_keepalive(self) -> None:
        idle = time.monotonic() - self.last_activity
        if idle > self.config.keepalive_timeout:
            self.close(RPCCode.UNAVAILABLE, f"no data for {idle:.0f} s (keepalive timeout)")
            return
        if idle > self.config.keepalive_interval and self._ping_sent_at is None:
            self._ping_sent_at = time.monotonic()
            self._queue_frame(frames.PING, 0, 0, 1)
        self._arm_keepalive()

    def close(self, code: int = RPCCode.OK, reason: str = "closed locally") -> None:
        """Send a GOAWAY with `reason` (when the channel is up), then close the socket."""
        if self.closed:
            return
        if self._sealer is not None and self._transport is not None:
            try:
                self._pending.clear()  # data not yet sealed is dropped: its streams fail below
                self._pending_size = 0
                self._queue_frame(frames.GOAWAY, 0, 0, 0, frames.encode_reason(code, reason))
                self._paused = False  # the transport buffers what it must; the socket closes next
                self._flush()
            except ConnectionClosedError:
                pass
        if code not in (RPCCode.OK, RPCCode.UNAVAILABLE):
            logger.info("closing connection to %s (%s): %s", self.remote_peer_id, self.remote_address, reason)
        self._shutdown(reason)

    def _shutdown(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if self._keepalive is not None:
            self._keepalive.cancel()
        error = ConnectionClosedError(
            f"connection to {self.remote_peer_id or self.remote_address} closed: {reason}"
        )
        if self._raw_waiter is not None and not self._raw_waiter[1].done():
            self._raw_waiter[1].set_exception(error)
        if not self._admission.done():
            self._admission.set_exception(error)
            self._admission.exception()  # mark retrieved: nobody may be waiting
        for stream in list(self._streams.values()):
            stream._on_reset(error)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._waiters.clear()
        self._pending.clear()
        if self._transport is not None:
            self._transport.close()
        self._closed_event.set()

    def abort(self) -> None:
        """Drop the connection at once, without a GOAWAY."""
        self._shutdown("aborted locally")
        if self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Connection({self.remote_peer_id} at {self.remote_address}, {state})"
