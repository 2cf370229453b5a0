"""`P2P`: one peer's network presence. It listens, dials, keeps a connection pool and serves RPC.

    p2p = P2P.create(identity_path="peer.key")            # blocking; starts on the background loop
    p2p.add_unary_handler("demo.echo/1", echo, EchoRequest)
    reply = p2p.call_unary(maddr_or_peer_id, "demo.echo/1", request, EchoReply, timeout=5)

Every blocking method has an async twin prefixed with `a` (`acreate`, `acall_unary`, `ashutdown`);
streaming calls are async only (`open_stream`). Async methods must run on the peer event loop
(`peer.utils.loop`), which is where `P2P.create` starts the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message

from peer.errors import (
    ConnectionClosedError,
    DialError,
    NetworkError,
    RPCCode,
    RPCError,
)
from peer.net.auth import AllowAll, Authorizer
from peer.net.config import TransportConfig
from peer.net.connection import Connection
from peer.net.handshake import StaticKey, handshake_with_timeout, hello_bytes
from peer.net.identity import Identity, PeerID
from peer.net.interfaces import local_addresses
from peer.net.multiaddr import Multiaddr
from peer.net.pool import ConnectionPool
from peer.net.rpc import RPCServer, RPCStream, open_call, raise_deadline
from peer.utils.aio import TaskGroup, timeout, timeout_at
from peer.utils.loop import run_coroutine

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
PeerRef = PeerID | Multiaddr | str


class P2P:
    """A peer on the network. Create it with `P2P.create` / `await P2P.acreate`."""

    def __init__(self, identity: Identity, *, config: TransportConfig, authorizer: Authorizer):
        self.identity = identity
        self.peer_id = identity.peer_id
        self._static_key = StaticKey.for_identity(identity)  # the Noise static key of every connection
        self.config = config
        self.authorizer = authorizer
        self.rpc = RPCServer(config)
        self.pool = ConnectionPool(self._dial_one)
        self._servers: list[asyncio.AbstractServer] = []
        self._listen_maddrs: list[Multiaddr] = []
        self._announce_maddrs: list[Multiaddr] = []
        self._group: TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._started = asyncio.Event()
        self._handshaking: set[Connection] = set()  # connections not yet in the pool
        self.is_alive = False

    # ---- creation and shutdown -------------------------------------------------------------

    @classmethod
    async def acreate(
        cls,
        *,
        identity: Identity | None = None,
        identity_path: str | os.PathLike[str] | None = None,
        host_maddrs: Sequence[str | Multiaddr] = ("/ip4/127.0.0.1/tcp/0",),
        announce_maddrs: Sequence[str | Multiaddr] = (),
        authorizer: Authorizer | None = None,
        config: TransportConfig | None = None,
    ) -> P2P:
        """Start a peer listening on `host_maddrs` (empty: a client that only dials)."""
        if identity is not None and identity_path is not None:
            raise ValueError("pass identity or identity_path, not both")
        if identity is None:
            identity = Identity.load_or_create(identity_path) if identity_path else Identity.generate()
        self = cls(identity, config=config or TransportConfig(), authorizer=authorizer or AllowAll())
        self._announce_maddrs = [Multiaddr.parse(m) for m in announce_maddrs]
        self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"p2p {self.peer_id.short()}")
        await self._started.wait()
        try:
            for maddr in host_maddrs:
                await self._listen(Multiaddr.parse(maddr))
        except BaseException:
            await self.ashutdown()
            raise
        self.is_alive = True
        return self

    @classmethod
    def create(cls, **kwargs: Any) -> P2P:
        """Blocking twin of `acreate`: the peer runs on the process's background event loop."""
        return run_coroutine(cls.acreate(**kwargs))

    async def _run(self) -> None:
        async with TaskGroup() as group:
            self._group = group
            self._started.set()
            sweeper = group.create_task(self._close_idle_connections())
            await self._stopping.wait()
            sweeper.cancel()
            for conn in [*self.pool.all(), *self._handshaking]:
                conn.close(RPCCode.UNAVAILABLE, "the peer is shutting down")

    async def _close_idle_connections(self) -> None:
        """Close connections that carried no stream for `config.idle_timeout` (0 disables this)."""
        idle_timeout = self.config.idle_timeout
        if idle_timeout <= 0:
            return
        while True:
            await asyncio.sleep(min(idle_timeout / 4, 30.0))
            for conn in self.pool.close_idle(idle_timeout):
                logger.debug("closed connection to %s: idle for %.0f s", conn.remote_peer_id, idle_timeout)

    async def ashutdown(self) -> None:
        self.is_alive = False
        for server in self._servers:
            server.close()
        self._stopping.set()
        if self._runner is not None:
            # shielded: cancelling whoever awaits the shutdown must not cancel the peer's own runner
            await asyncio.shield(self._runner)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    def shutdown(self) -> None:
        run_coroutine(self.ashutdown())

    # ---- listening and addresses -----------------------------------------------------------

    async def _listen(self, maddr: Multiaddr) -> None:
        host, port = maddr.host_port()
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(self._accept_factory, host, port, reuse_address=True)
        except OSError as e:
            raise NetworkError(f"cannot listen on {maddr}: {e.strerror or e}") from e
        self._servers.append(server)
        for sock in server.sockets:
            bound_host, bound_port = sock.getsockname()[:2]
            self._listen_maddrs.append(Multiaddr.from_host_port(bound_host, bound_port))

    def get_visible_maddrs(self) -> list[Multiaddr]:
        """The addresses others can dial to reach this peer, each ending in /p2p/<our PeerID>."""
        maddrs = self._announce_maddrs or self._expand_wildcards(self._listen_maddrs)
        return [maddr.with_peer_id(self.peer_id) for maddr in maddrs]

    @staticmethod
    def _expand_wildcards(maddrs: list[Multiaddr]) -> list[Multiaddr]:
        result = []
        for maddr in maddrs:
            host, port = maddr.host_port()
            if host in ("0.0.0.0", "::"):
                for address in local_addresses(ipv6=host == "::"):
                    result.append(Multiaddr.from_host_port(address, port))
            else:
                result.append(maddr)
        return result

    # ---- connections -------------------------------------------------------------------------

    def _accept_factory(self) -> Connection:
        conn = Connection(self.config, initiator=False, hello=hello_bytes())
        if self._group is None or self._stopping.is_set():
            asyncio.get_running_loop().call_soon(conn.abort)
        else:
            self._group.create_task(self._accept(conn))
        return conn

    async def _accept(self, conn: Connection) -> None:
        self._handshaking.add(conn)
        try:
            await handshake_with_timeout(
                conn, self.identity, self.authorizer, None, self.config.handshake_timeout, self._static_key
            )
        except NetworkError as e:
            logger.debug("inbound handshake from %s failed: %s", conn.remote_address, e)
            conn.close(RPCCode.INVALID_ARGUMENT, str(e))
            return
        except Exception:  # the boundary: a bad handshake must never take the peer down
            logger.exception("inbound handshake from %s failed", conn.remote_address)
            conn.close(RPCCode.INTERNAL, "internal error during the handshake")
            return
        finally:
            self._handshaking.discard(conn)
        if self._stopping.is_set():
            conn.close(RPCCode.UNAVAILABLE, "the peer is shutting down")
            return
        self.pool.add(conn)
        await self._serve_connection(conn)

    async def _serve_connection(self, conn: Connection) -> None:
        """Serve the inbound streams of a pooled connection until it closes."""
        try:
            await conn.run(self.rpc.serve_stream)
        except Exception:  # the boundary: one broken connection never takes the peer down
            logger.exception("connection to %s failed", conn.remote_peer_id)
        finally:
            self.pool.remove(conn)
            conn.close(RPCCode.UNAVAILABLE, "closing")

    async def _dial_one(self, maddr: Multiaddr, expected: PeerID | None) -> Connection:
        if self._group is None or self._stopping.is_set():
            raise DialError("this peer is shut down")
        if expected is not None and expected == self.peer_id:
            raise DialError("refusing to dial ourselves")
        host, port = maddr.host_port()
        loop = asyncio.get_running_loop()
        try:
            async with timeout(self.config.dial_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(self.config, initiator=True, hello=hello_bytes()), host, port
                )
        except TimeoutError:
            raise DialError(f"no TCP connection to {maddr} within {self.config.dial_timeout} s") from None
        except OSError as e:
            raise DialError(f"cannot connect to {maddr}: {e.strerror or e}") from None
        self._handshaking.add(conn)
        try:
            await handshake_with_timeout(
                conn,
                self.identity,
                self.authorizer,
                expected,
                self.config.handshake_timeout,
                self._static_key,
            )
        except BaseException:
            conn.abort()
            raise
        finally:
            self._handshaking.discard(conn)
        if self._stopping.is_set():
            conn.close(RPCCode.UNAVAILABLE, "the peer is shutting down")
            raise DialError("this peer is shutting down")
        self.pool.add(conn)  # at once, so that concurrent calls reuse it
        self._group.create_task(self._serve_connection(conn))
        return conn

    def add_addresses(self, peer_id: PeerID, maddrs: Iterable[Multiaddr | str]) -> None:
        """Remember where `peer_id` can be reached (used when a call names only a PeerID)."""
        self.pool.add_addresses(peer_id, maddrs)

    async def connect(self, peer: PeerRef) -> PeerID:
        """Connect to `peer` (a PeerID we know addresses for, or a multiaddr) and return its PeerID."""
        conn = await self._connection_to(peer)
        assert conn.remote_peer_id is not None
        return conn.remote_peer_id

    async def _connection_to(self, peer: PeerRef) -> Connection:
        if isinstance(peer, PeerID):
            return await self.pool.connect(peer)
        if isinstance(peer, str) and not peer.startswith("/"):  # a base58 PeerID
            return await self.pool.connect(PeerID.from_base58(peer))
        maddr = Multiaddr.parse(peer)
        peer_id = maddr.peer_id
        if peer_id is None:  # a bare address: learn who is there
            conn = await self._dial_one(maddr, None)
            self.pool.add_addresses(conn.remote_peer_id, [maddr])  # type: ignore[arg-type]
            return conn
        return await self.pool.connect(peer_id, [maddr.without_peer_id() if not maddr.is_relayed else maddr])

    # ---- RPC ---------------------------------------------------------------------------------

    def add_handler(self, method: str, handler: Callable[[RPCStream], Awaitable[None]]) -> None:
        """Serve a streaming method: `handler(rpc)` reads and writes messages on `rpc`."""
        self.rpc.add_handler(method, handler)

    def add_unary_handler(
        self, method: str, handler: Callable[[M, RPCStream], Awaitable[Message]], request_type: type[M]
    ) -> None:
        """Serve a unary method: `handler(request, rpc) -> response`."""
        self.rpc.add_unary_handler(method, handler, request_type)

    async def acall_unary(
        self,
        peer: PeerRef,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float | None = None,
    ) -> M:
        """Call a unary `method` on `peer`; raises an `RPCError` subclass on failure."""
        async with self.open_stream(peer, method, timeout=timeout, first=request) as rpc:
            response = await rpc.recv(response_type)
            if response is None:
                raise RPCError(RPCCode.INTERNAL, f"{method} on {rpc.remote_peer_id} returned no response")
            await rpc.recv()  # the status: raises if the handler failed after responding
            return response

    def call_unary(
        self,
        peer: PeerRef,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float | None = None,
    ) -> M:
        """Blocking twin of `acall_unary`."""
        return run_coroutine(self.acall_unary(peer, method, request, response_type, timeout=timeout))

    @contextlib.asynccontextmanager
    async def open_stream(
        self,
        peer: PeerRef,
        method: str,
        *,
        timeout: float | None = None,
        metadata: dict[str, bytes] | None = None,
        first: Message | None = None,
    ) -> AsyncIterator[RPCStream]:
        """A streaming call: send with `rpc.send`, end sending with `rpc.close_send()`, read with
        `rpc.recv`/`rpc.messages`. With `first`, that message goes out with the request and sending
        ends there (a unary or server-streaming call). The deadline covers connecting too."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        rpc: RPCStream | None = None
        scope = timeout_at(deadline)
        try:
            async with scope:
                conn = await self._connection_to(peer)
                stream = await conn.open_stream()
                rpc = await open_call(stream, self.config, method, timeout, metadata, first)
                yield rpc
        except TimeoutError:
            if not scope.expired():  # the caller's own TimeoutError, not our deadline
                if rpc is not None:
                    rpc.cancel(RPCCode.CANCELLED, f"the caller of {method} failed")
                raise
            if rpc is not None:
                rpc.cancel(RPCCode.DEADLINE_EXCEEDED, f"{method} passed its deadline")
            raise raise_deadline(method, timeout) from None
        except BaseException:
            if rpc is not None and not rpc.finished:
                rpc.cancel(RPCCode.CANCELLED, f"{method} was cancelled by the caller")
            raise
        finally:
            if rpc is not None:  # the call is over: the stream must not outlive it on either side
                rpc.stream.release(f"the caller of {method} stopped reading")


__all__ = ["P2P", "ConnectionClosedError", "PeerRef"]
