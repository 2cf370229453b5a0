"""The secure handshake: mutual PeerIDs, expected-PeerID checks, men in the middle, versions,
and the authorizer hook (a refused peer reaches no handler)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from net_helpers import ECHO, call_echo, running_peers

from peer.errors import (
    AuthorizationError,
    ConnectionClosedError,
    IncompatibleProtocolError,
    PeerIDMismatchError,
    RPCError,
)
from peer.net import protocol
from peer.net.auth import Authorizer
from peer.net.identity import Identity, PeerID
from peer.net.p2p import P2P
from peer.proto.net_pb2 import Status


def _addr(p2p: P2P) -> str:
    return str(p2p.get_visible_maddrs()[0].without_peer_id())


class Proxy:
    """A TCP relay between a dialer and `target`. `mitm` runs its own peer's handshake with its own
    key toward the dialer (a man in the middle); `tamper` flips one bit in the next chunk sent
    toward the target."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.tamper = False
        self.tampered = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"/ip4/127.0.0.1/tcp/{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False))

    async def _pipe(self, reader, writer, upstream: bool) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                if upstream and self.tamper:
                    self.tamper = False
                    chunk = chunk[:-1] + bytes([chunk[-1] ^ 0x01])
                    self.tampered.set()
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self._writers:
            writer.close()
        for writer in self._writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await self.server.wait_closed()


def test_both_sides_learn_each_others_peer_id():
    async def main():
        async with running_peers(2) as (a, b):
            seen: list[PeerID] = []

            async def whoami(request: Status, rpc) -> Status:
                seen.append(rpc.remote_peer_id)
                return Status(message=str(rpc.remote_peer_id))

            a.add_unary_handler("test.whoami/1", whoami, Status)
            # dial a bare address: the handshake alone tells b who is there
            assert await b.connect(_addr(a)) == a.peer_id
            reply = await b.acall_unary(a.peer_id, "test.whoami/1", Status(), Status, timeout=5)
            assert seen == [b.peer_id] and reply.message == str(b.peer_id)
            conn = a.pool.get_open(b.peer_id)
            assert conn is not None and conn.remote_peer_id == b.peer_id

    asyncio.run(main())


def test_a_wrong_expected_peer_id_is_rejected():
    async def main():
        async with running_peers(2) as (a, b):
            impostor = Identity.generate().peer_id
            with pytest.raises(
                PeerIDMismatchError, match=f"expecting peer {impostor}, but it proved to be {a.peer_id}"
            ):
                await b.connect(f"{_addr(a)}/p2p/{impostor}")
            assert b.pool.get_open(impostor) is None
            assert await call_echo(b, a.get_visible_maddrs()[0]) == 2  # the right PeerID still works

    asyncio.run(main())


def test_a_man_in_the_middle_with_another_key_is_rejected():
    """The relay runs its own handshake (its own key) toward the dialer: the dialer expects the
    real PeerID and refuses the relay's, even though the relay reaches the real peer behind it."""

    async def main():
        async with running_peers(2) as (real, dialer):
            mitm = await P2P.acreate()
            forwarded: list[str] = []

            async def forward(request: Status, rpc) -> Status:
                forwarded.append(request.message)
                return await mitm.acall_unary(real.peer_id, ECHO, request, Status, timeout=5)

            mitm.add_unary_handler(ECHO, forward, Status)
            mitm.add_addresses(real.peer_id, real.get_visible_maddrs())
            try:
                with pytest.raises(PeerIDMismatchError):
                    await call_echo(dialer, f"{_addr(mitm)}/p2p/{real.peer_id}")
                assert forwarded == []
            finally:
                await mitm.ashutdown()

    asyncio.run(main())


def test_a_relay_that_tampers_with_bytes_gets_the_connection_closed():
    async def main():
        async with running_peers(2) as (server, dialer):
            proxy = Proxy(server.get_visible_maddrs()[0].host_port()[1])
            address = f"{await proxy.start()}/p2p/{server.peer_id}"
            try:
                assert await call_echo(dialer, address) == 2  # a faithful relay is fine
                conn = dialer.pool.get_open(server.peer_id)
                assert conn is not None
                proxy.tamper = True
                with pytest.raises((ConnectionClosedError, RPCError)):
                    await call_echo(dialer, server.peer_id)
                assert proxy.tampered.is_set()
                await conn.wait_closed()
                assert "authentication" in conn.close_reason
            finally:
                await proxy.close()

    asyncio.run(main())


def test_a_different_protocol_version_is_refused_with_a_clear_message():
    other = b"/hmp/9.0.0/noise-xx-25519-aesgcm-sha256"

    async def old_peer(reader, writer):  # a peer of another version: it says hello, then waits
        writer.write(bytes([len(other)]) + other)
        await reader.read()
        writer.close()

    async def main():
        async with running_peers(2) as (a, b):
            server = await asyncio.start_server(old_peer, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            try:
                with pytest.raises(
                    IncompatibleProtocolError, match=r"speaks '/hmp/9\.0\.0.*this peer speaks '/hmp/1"
                ):
                    await b.connect(f"/ip4/127.0.0.1/tcp/{port}")
            finally:
                server.close()
                await server.wait_closed()
            # and as the responder: a's side reads the other hello and closes the connection
            reader, writer = await asyncio.open_connection(*a.get_visible_maddrs()[0].host_port())
            writer.write(bytes([len(other)]) + other)
            hello = protocol.PROTOCOL_ID.encode()
            assert await reader.readexactly(1 + len(hello)) == bytes([len(hello)]) + hello
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing more sent
            writer.close()
            await writer.wait_closed()
            assert await call_echo(b, a.get_visible_maddrs()[0]) == 2

    asyncio.run(main())


class TokenAuthorizer(Authorizer):
    """Presents `token` and accepts remotes whose token is `expected` (a test authorizer)."""

    def __init__(self, token: bytes | None, expected: bytes | None):
        self.token, self.expected = token, expected
        self.seen: list[tuple[PeerID, bytes | None]] = []

    async def get_token(self) -> bytes | None:
        return self.token

    async def check(self, remote_peer_id: PeerID, token: bytes | None) -> None:
        self.seen.append((remote_peer_id, token))
        if self.expected is not None and token != self.expected:
            raise AuthorizationError(f"bad token {token!r}")


def test_a_refused_token_means_no_rpc_at_all():
    server_auth = TokenAuthorizer(b"server", expected=b"good")
    good, bad = TokenAuthorizer(b"good", None), TokenAuthorizer(b"bad", None)

    async def main():
        async with running_peers(3, authorizers=[server_auth, good, bad]) as (server, ok_peer, bad_peer):
            calls: list[PeerID] = []

            async def record(request: Status, rpc) -> Status:
                calls.append(rpc.remote_peer_id)
                assert rpc.remote_token == b"good"
                return request

            server.add_unary_handler("test.record/1", record, Status)
            target = server.get_visible_maddrs()[0]
            with pytest.raises(AuthorizationError, match=r"refused us: .*bad token b'bad'"):
                await bad_peer.acall_unary(target, "test.record/1", Status(), Status, timeout=5)
            await ok_peer.acall_unary(target, "test.record/1", Status(), Status, timeout=5)
            assert calls == [ok_peer.peer_id]
            assert bad.seen == [(server.peer_id, b"server")] and good.seen == [(server.peer_id, b"server")]
            assert (bad_peer.peer_id, b"bad") in server_auth.seen
            assert bad_peer.pool.get_open(server.peer_id) is None

    asyncio.run(main())


def test_the_dialer_refuses_a_server_with_a_bad_token():
    server_auth = TokenAuthorizer(b"forged", None)
    client_auth = TokenAuthorizer(b"client", expected=b"genuine")

    async def main():
        async with running_peers(2, authorizers=[server_auth, client_auth]) as (server, client):
            with pytest.raises(AuthorizationError, match="bad token b'forged'"):
                await call_echo(client, server.get_visible_maddrs()[0])
            assert server_auth.seen == []  # the dialer stopped before sending its identity

    asyncio.run(main())


def test_a_failing_authorizer_refuses_instead_of_admitting():
    class Broken(Authorizer):
        async def get_token(self):
            return None

        async def check(self, remote_peer_id, token):
            raise RuntimeError("database down")

    async def main():
        async with running_peers(2, authorizers=[Broken(), TokenAuthorizer(None, None)]) as (server, client):
            with pytest.raises(AuthorizationError, match="authorizer failed: RuntimeError"):
                await call_echo(client, server.get_visible_maddrs()[0])

    asyncio.run(main())


def test_a_reconnecting_peer_is_checked_from_the_cache_and_a_replayed_binding_is_not():
    """A host keeps one Noise static key, so a peer that connects again presents the same signed
    binding and its check comes from the cache; the cache is keyed by the static key too, so a
    genuine identity payload replayed over another static key is still refused."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from peer.errors import HandshakeError
    from peer.net.handshake import StaticKey, _bound_peer_id, _make_payload, _verify_payload

    async def main():
        async with running_peers(2) as (a, b):
            assert await call_echo(b, a.get_visible_maddrs()[0]) == 2
            first = a.pool.get_open(b.peer_id)
            assert first is not None
            first.close(0, "test")
            b.pool.get_open(a.peer_id).close(0, "test")
            await asyncio.sleep(0.05)
            hits = _bound_peer_id.cache_info().hits
            assert await call_echo(b, a.get_visible_maddrs()[0]) == 2  # a second connection
            assert a.pool.get_open(b.peer_id) is not first
            assert _bound_peer_id.cache_info().hits >= hits + 2  # both sides: from the cache

    asyncio.run(main())

    genuine_identity = Identity.generate()
    genuine = StaticKey.for_identity(genuine_identity)
    payload = _make_payload(genuine_identity, genuine, None, 65536)
    assert _verify_payload(payload, genuine.public)[0] == genuine_identity.peer_id  # now cached
    forged_static = X25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(HandshakeError, match="does not cover its Noise key"):
        _verify_payload(payload, forged_static)
