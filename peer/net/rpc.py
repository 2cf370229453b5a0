"""Named, versioned RPC over multiplexed streams.

One call is one stream. Inside it, messages are framed as

    kind: u8 | length: u32 | body

    REQUEST (1)  body = RequestHeader protobuf (method, timeout_ms, metadata); the caller's first message
    MESSAGE (2)  body = one protobuf message (or raw bytes); any number, both ways
    STATUS  (3)  body = Status protobuf (code, message); the handler's last message, then FIN
    TENSOR  (4)  body = TensorHeader protobuf; followed directly by `nbytes` raw bytes of the tensor

The caller half-closes (FIN) when it has sent all its messages, so one mechanism gives unary,
client-streaming, server-streaming and bidirectional calls. A deadline travels as `timeout_ms`: the
handler is cancelled when it passes, and the caller stops waiting. Cancelling the caller resets the
stream, which cancels the remote handler. A handler's exception comes back as a STATUS with a code.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from peer.errors import (
    ConnectionClosedError,
    ProtocolViolationError,
    RPCCode,
    RPCDeadlineExceeded,
    RPCError,
    rpc_error_from_code,
)
from peer.net import protocol
from peer.net.config import TransportConfig
from peer.net.identity import PeerID
from peer.net.stream import Stream
from peer.utils.aio import timeout_at

logger = logging.getLogger(__name__)

REQUEST, MESSAGE, STATUS, TENSOR = 1, 2, 3, 4
_KIND_NAMES = {REQUEST: "REQUEST", MESSAGE: "MESSAGE", STATUS: "STATUS", TENSOR: "TENSOR"}
MESSAGE_HEADER = struct.Struct(">BI")
_REQUEST_HEADER_LIMIT = 64 * 1024

M = TypeVar("M", bound=Message)
Handler = Callable[["RPCStream"], Awaitable[None]]


class RPCStream:
    """Both ends of one call: send and receive messages and tensors on one stream."""

    def __init__(self, stream: Stream, config: TransportConfig, *, method: str, deadline: float | None):
        self.stream = stream
        self.config = config
        self.method = method
        self.deadline = deadline  # in `time.monotonic()` seconds, or None
        self.is_caller = stream.outbound
        self.finished = False

    @property
    def remote_peer_id(self) -> PeerID:
        peer_id = self.stream.connection.remote_peer_id
        assert peer_id is not None
        return peer_id

    @property
    def remote_token(self) -> bytes | None:
        return self.stream.connection.remote_token

    def time_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    # ---- sending -------------------------------------------------------------------------------

    def _check_size(self, size: int) -> None:
        if size > self.config.max_message_size:
            raise RPCError(
                RPCCode.MESSAGE_TOO_LARGE,
                f"a {size}-byte message exceeds the {self.config.max_message_size}-byte limit",
            )

    async def send(self, message: Message | bytes | bytearray | memoryview, *, fin: bool = False) -> None:
        """Send one message (a protobuf message or raw bytes); `fin` half-closes after it."""
        body = message.SerializeToString() if isinstance(message, Message) else message
        self._check_size(len(body))
        if len(body) < 65536:
            await self.stream.write(frame_message(MESSAGE, body), fin=fin)
        else:
            await self.stream.write(MESSAGE_HEADER.pack(MESSAGE, len(body)))
            await self.stream.write(body, fin=fin)

    async def send_tensor_bytes(
        self, header: protocol.TensorHeader, payload: bytes | bytearray | memoryview
    ) -> None:
        """Send a tensor header and its raw payload (`peer.compression.transfer` builds both)."""
        if len(payload) != header.nbytes:
            raise ValueError(f"payload has {len(payload)} bytes but the header says {header.nbytes}")
        await self.send_tensor_header(header)
        await self.send_raw(payload)

    async def send_tensor_header(self, header: protocol.TensorHeader) -> None:
        """Send only a tensor header; then send exactly `header.nbytes` bytes with `send_raw`, in
        pieces of any size (so a tensor larger than memory can stream from its source)."""
        if header.nbytes > self.config.max_tensor_size:
            raise RPCError(
                RPCCode.MESSAGE_TOO_LARGE,
                f"a {header.nbytes}-byte tensor exceeds the {self.config.max_tensor_size}-byte limit",
            )
        await self.stream.write(frame_message(TENSOR, protocol.encode_tensor_header(header)))

    async def send_raw(self, data: bytes | bytearray | memoryview) -> None:
        """Send raw tensor bytes after `send_tensor_header`. Zero-copy: returns once `data` has been
        sealed into records, so the caller may then reuse the buffer."""
        await self.stream.write(data)

    async def close_send(self) -> None:
        """Half-close: the remote's next read of messages ends."""
        await self.stream.close_write()

    async def finish(self, code: int = RPCCode.OK, message: str = "") -> None:
        """(handler) End the call with a status; the caller sees an error unless `code` is OK."""
        if self.finished:
            return
        self.finished = True
        body = protocol.encode_status(protocol.Status(code=int(code), message=message[:4096]))
        await self.stream.write(frame_message(STATUS, body), fin=True)

    def cancel(self, code: int = RPCCode.CANCELLED, reason: str = "cancelled by the caller") -> None:
        self.stream.reset(code, reason)

    # ---- receiving -----------------------------------------------------------------------------

    async def _read_header(self) -> tuple[int, int] | None:
        first = await self.stream.read_some(MESSAGE_HEADER.size)
        if not first:
            return None
        if len(first) < MESSAGE_HEADER.size:
            rest = await self.stream.read_exactly(MESSAGE_HEADER.size - len(first))
            first = memoryview(bytes(first) + rest)
        kind, length = MESSAGE_HEADER.unpack(first)
        if kind not in _KIND_NAMES:
            raise self._violation(f"unknown RPC message kind {kind}")
        return kind, length

    def _violation(self, reason: str) -> ProtocolViolationError:
        self.stream.reset(RPCCode.INVALID_ARGUMENT, reason)
        return ProtocolViolationError(
            f"{reason} (from {self.stream.connection.remote_peer_id}, {self.method})"
        )

    async def _read_body(self, length: int, limit: int) -> bytes:
        if length > limit:
            reason = f"a {length}-byte message exceeds the {limit}-byte limit"
            self.stream.reset(RPCCode.MESSAGE_TOO_LARGE, reason)
            raise RPCError(RPCCode.MESSAGE_TOO_LARGE, reason)
        return await self.stream.read_exactly(length)

    async def _next(self) -> tuple[int, bytes] | None:
        """The next (kind, body) for MESSAGE/TENSOR; None at a clean end; raises on an error STATUS."""
        header = await self._read_header()
        if header is None:
            if self.is_caller and not self.finished:
                raise RPCError(RPCCode.UNAVAILABLE, f"{self.method}: the stream ended without a status")
            return None
        kind, length = header
        body = await self._read_body(length, self.config.max_message_size)
        if kind == STATUS and self.is_caller:
            self.finished = True
            status = protocol.decode_status(body)
            if status.code != RPCCode.OK:
                raise rpc_error_from_code(status.code, status.message)
            return None
        if kind in (STATUS, REQUEST):
            raise self._violation(f"unexpected {_KIND_NAMES[kind]} message")
        return kind, body

    async def recv(self, message_type: type[M] | None = None) -> Any:
        """The next message, parsed as `message_type` (raw bytes if None); None when the call ends."""
        item = await self._next()
        if item is None:
            return None
        kind, body = item
        if kind != MESSAGE:
            raise self._violation(f"expected a MESSAGE, got {_KIND_NAMES[kind]}")
        if message_type is None:
            return body
        message = message_type()
        try:
            message.ParseFromString(body)
        except DecodeError as e:
            raise self._violation(f"malformed {message_type.__name__}: {e}") from None
        return message

    async def messages(self, message_type: type[M] | None = None) -> AsyncIterator[Any]:
        """Iterate over the remaining messages until the call (or the caller's sending) ends."""
        while True:
            message = await self.recv(message_type)
            if message is None:
                return
            yield message

    async def recv_tensor_header(self) -> protocol.TensorHeader | None:
        """The next tensor's header; read its `nbytes` raw bytes next with `read_raw`/`readinto`."""
        item = await self._next()
        if item is None:
            return None
        kind, body = item
        if kind != TENSOR:
            raise self._violation(f"expected a TENSOR, got {_KIND_NAMES[kind]}")
        header = protocol.decode_tensor_header(body)
        if header.nbytes > self.config.max_tensor_size:
            reason = f"a {header.nbytes}-byte tensor exceeds the {self.config.max_tensor_size}-byte limit"
            self.stream.reset(RPCCode.MESSAGE_TOO_LARGE, reason)
            raise RPCError(RPCCode.MESSAGE_TOO_LARGE, reason)
        return header

    async def readinto(self, buffer: memoryview) -> None:
        await self.stream.readinto(buffer)

    async def iter_raw(self, nbytes: int) -> AsyncIterator[memoryview]:
        """Yield exactly `nbytes` of raw stream data as it arrives, as views of the memory it was
        decrypted into (`Stream.read_some`: never reused, so a caller may keep the views)."""
        left = nbytes
        while left:
            chunk = await self.stream.read_some(left)
            if not chunk:
                raise ConnectionClosedError(f"stream ended {left} bytes before the end of a payload")
            left -= len(chunk)
            yield chunk


def frame_message(kind: int, body: bytes | bytearray | memoryview) -> bytes:
    """One RPC message as it goes on a stream: kind, length, body."""
    return MESSAGE_HEADER.pack(kind, len(body)) + body


def _deadline_from_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    return time.monotonic() + timeout


class RPCServer:
    """The handler registry of one peer, and the dispatcher of its inbound streams."""

    def __init__(self, config: TransportConfig):
        self.config = config
        self._handlers: dict[str, Handler] = {}

    def add_handler(self, method: str, handler: Handler) -> None:
        """Serve `method` (e.g. "dht.find/1") with `handler(rpc: RPCStream)`, a coroutine function."""
        if not isinstance(method, str) or "/" not in method:
            raise ValueError(f"method must be a versioned name like 'subsystem.name/1', got {method!r}")
        if method in self._handlers:
            raise ValueError(f"a handler for {method!r} is already registered")
        self._handlers[method] = handler

    def add_unary_handler(
        self, method: str, handler: Callable[[M, RPCStream], Awaitable[Message]], request_type: type[M]
    ) -> None:
        """Serve `method` with `handler(request, rpc) -> response` (one message each way)."""

        async def unary(rpc: RPCStream) -> None:
            request = await rpc.recv(request_type)
            if request is None:
                raise RPCError(RPCCode.INVALID_ARGUMENT, f"{method} needs a {request_type.__name__} request")
            response = await handler(request, rpc)
            await rpc.send(response)

        self.add_handler(method, unary)

    def remove_handler(self, method: str) -> None:
        self._handlers.pop(method, None)

    @property
    def methods(self) -> list[str]:
        return sorted(self._handlers)

    async def serve_stream(self, stream: Stream) -> None:
        """Run the handler named by the stream's REQUEST; never raises (it is the task boundary)."""
        try:
            request = await self._read_request(stream)
        except (RPCError, ProtocolViolationError, ConnectionClosedError) as e:
            logger.debug("bad RPC request from %s: %s", stream.remote_peer_id, e)
            stream.release("bad request")
            return
        if request is None:
            stream.release("no request")
            return
        deadline = None if not request.timeout_ms else time.monotonic() + request.timeout_ms / 1000
        rpc = RPCStream(stream, self.config, method=request.method, deadline=deadline)
        task = asyncio.current_task()
        if task is not None:
            stream.on_remote_reset = task.cancel  # cancellation reaches the handler
        handler = self._handlers.get(request.method)
        try:
            if handler is None:
                message = self._unknown_method_message(request.method)
                await self._finish_quietly(rpc, RPCCode.UNIMPLEMENTED, message)
                return
            await self._run_handler(rpc, handler)
        finally:
            stream.on_remote_reset = None
            stream.release(f"{request.method} already ended")

    async def _read_request(self, stream: Stream) -> protocol.RequestHeader | None:
        rpc = RPCStream(stream, self.config, method="?", deadline=None)
        header = await rpc._read_header()
        if header is None:
            return None
        kind, length = header
        if kind != REQUEST:
            raise rpc._violation("the first message of a call must be a REQUEST")
        body = await rpc._read_body(length, _REQUEST_HEADER_LIMIT)
        return protocol.decode_request_header(body)

    def _unknown_method_message(self, method: str) -> str:
        base = method.rsplit("/", 1)[0]
        versions = [name for name in self._handlers if name.rsplit("/", 1)[0] == base]
        if versions:
            served = ", ".join(sorted(versions))
            return f"this peer has no handler {method!r}; it serves {served} (version mismatch)"
        return f"this peer has no handler {method!r}"

    async def _run_handler(self, rpc: RPCStream, handler: Handler) -> None:
        code, message = RPCCode.OK, ""
        try:
            async with timeout_at(_to_loop_time(rpc.deadline)):
                await handler(rpc)
        except TimeoutError:
            rpc.cancel(RPCCode.DEADLINE_EXCEEDED, f"{rpc.method} passed its deadline")
            return
        except asyncio.CancelledError:  # the caller reset the stream, or this peer is shutting down
            rpc.cancel(RPCCode.CANCELLED, f"{rpc.method} was cancelled")
            raise
        except RPCError as e:
            code, message = e.code, e.message
        except (ProtocolViolationError, ConnectionClosedError) as e:
            logger.debug("call %s from %s failed: %s", rpc.method, rpc.stream.remote_peer_id, e)
            return
        except Exception as e:
            logger.warning("handler %s failed for %s", rpc.method, rpc.stream.remote_peer_id, exc_info=True)
            code, message = RPCCode.INTERNAL, f"{type(e).__name__}: {e}"
        await self._finish_quietly(rpc, code, message)

    @staticmethod
    async def _finish_quietly(rpc: RPCStream, code: int, message: str) -> None:
        try:
            await rpc.finish(code, message)
        except (RPCError, ConnectionClosedError):
            pass


def _to_loop_time(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


async def open_call(
    stream: Stream,
    config: TransportConfig,
    method: str,
    timeout: float | None,
    metadata: dict[str, bytes] | None = None,
    first: Message | None = None,
) -> RPCStream:
    """Start a call on a fresh outbound stream: send its REQUEST. With `first`, that message goes out
    in the same write and sending ends there (a unary or server-streaming call)."""
    deadline = _deadline_from_timeout(timeout)
    timeout_ms = 0 if timeout is None else max(1, int(timeout * 1000))
    header = protocol.encode_request_header(
        protocol.RequestHeader(method=method, timeout_ms=timeout_ms, metadata=metadata or {})
    )
    rpc = RPCStream(stream, config, method=method, deadline=deadline)
    if first is None:
        await stream.write(frame_message(REQUEST, header))
        return rpc
    body = first.SerializeToString()
    rpc._check_size(len(body))
    await stream.write(frame_message(REQUEST, header) + frame_message(MESSAGE, body), fin=True)
    return rpc


def raise_deadline(method: str, timeout: float | None) -> RPCDeadlineExceeded:
    return RPCDeadlineExceeded(message=f"{method} did not finish within {timeout} s")
