"""Hostile bytes: garbage, oversize lengths, tampered and malformed records from a raw socket. The
server closes that one connection cleanly and keeps serving everyone else; the next call reconnects.
Also: a restarted peer keeps its PeerID and others reconnect to it."""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from net_helpers import call_echo, running_peers

from peer.errors import ConnectionClosedError, DialError, NetworkError, RPCError
from peer.net import frames, protocol
from peer.net.auth import AllowAll, Authorizer
from peer.net.config import TransportConfig
from peer.net.identity import Identity
from peer.net.noise import XXHandshake
from peer.net.p2p import P2P
from peer.net.record import LENGTH, RecordOpener, RecordSealer
from peer.net.rpc import MESSAGE_HEADER, REQUEST

HELLO = protocol.PROTOCOL_ID.encode()
U16 = struct.Struct(">H")


class RawPeer:
    """A hand-driven client on a plain socket: it can speak the protocol correctly, then misbehave."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.sealer: RecordSealer | None = None
        self.opener: RecordOpener | None = None

    @classmethod
    async def connect(cls, p2p: P2P) -> RawPeer:
        return cls(*await asyncio.open_connection(*p2p.get_visible_maddrs()[0].host_port()))

    async def handshake(self, identity: Identity | None = None, early: bytes | None = None) -> None:
        """Complete the handshake; with `early`, send that record before the verdict arrives."""
        identity = identity or Identity.generate()
        self.writer.write(bytes([len(HELLO)]) + HELLO)
        assert await self.reader.readexactly(1 + len(HELLO)) == bytes([len(HELLO)]) + HELLO
        noise = XXHandshake(True, X25519PrivateKey.generate(), prologue=HELLO + HELLO)
        self._send_message(noise.write_message(b""))
        (length,) = U16.unpack(await self.reader.readexactly(2))
        noise.read_message(await self.reader.readexactly(length))
        signature = identity.sign(protocol.STATIC_KEY_SIGNATURE_PREFIX + noise.static_public)
        payload = protocol.HandshakePayload(
            identity.peer_id.to_bytes()[2:], signature, max_record_size=1 << 20
        )
        self._send_message(noise.write_message(protocol.encode_handshake_payload(payload)))
        send_key, recv_key = noise.split()
        self.sealer, self.opener = RecordSealer(send_key), RecordOpener(recv_key, 2 << 20)
        if early is not None:
            self.send_record(early)
            return
        admitted = await self.read_record()
        assert frames.parse_frames(admitted)[0].type == frames.PING  # PING/ACK 0: admitted

    def _send_message(self, message: bytes) -> None:
        self.writer.write(U16.pack(len(message)) + message)

    async def read_record(self) -> bytes:
        assert self.opener is not None
        (length,) = LENGTH.unpack(header := await self.reader.readexactly(4))
        return self.opener.open(header, await self.reader.readexactly(length))

    def send_record(self, plaintext: bytes) -> bytes:
        assert self.sealer is not None
        record = bytes(self.sealer.seal([plaintext], len(plaintext)))
        self.writer.write(record)
        return record

    async def closed_by_server(self) -> bytes:
        """Everything the server sent until it closed the connection (must happen promptly)."""
        data = b""
        with contextlib.suppress(ConnectionResetError):  # closing with our bytes unread sends a RST
            while more := await asyncio.wait_for(self.reader.read(65536), 10):
                data += more
        return data

    async def goaway_reason(self) -> str:
        """Skip records (window updates) up to the GOAWAY; its reason, once the server closed."""
        while (frame := frames.parse_frames(await self.read_record())[-1]).type != frames.GOAWAY:
            pass
        assert await self.closed_by_server() == b""
        return frames.decode_reason(frame.payload)[1]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def _still_serves(server: P2P, client: P2P) -> None:
    assert await call_echo(client, server.get_visible_maddrs()[0], 7) == 8


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".ljust(300, b"x"),
        b"\xff" * 300,
        b"\0" * 300,
        bytes([len(HELLO)]) + HELLO + b"\xff\xff" + b"\0" * 65535,
        bytes([len(HELLO)]) + HELLO + b"\0\0",
    ],
)
def test_garbage_before_the_handshake_gets_a_clean_close(garbage):
    async def main():
        async with running_peers(2) as (server, client):
            raw = await RawPeer.connect(server)
            raw.writer.write(garbage)
            received = await raw.closed_by_server()
            assert received.startswith(bytes([len(HELLO)]) + HELLO)
            await raw.close()
            await _still_serves(server, client)

    asyncio.run(main())


def test_a_silent_or_slow_dialer_is_dropped_after_the_handshake_timeout():
    async def main():
        async with running_peers(2, config=TransportConfig(handshake_timeout=0.3)) as (server, client):
            raw = await RawPeer.connect(server)
            raw.writer.write(bytes([len(HELLO)]) + HELLO + b"\0")  # then nothing more
            assert (await raw.closed_by_server()).startswith(bytes([len(HELLO)]) + HELLO)
            await raw.close()
            await _still_serves(server, client)

    asyncio.run(main())


def test_a_flood_before_the_handshake_is_cut_off():
    async def main():
        async with running_peers(2) as (server, client):
            raw = await RawPeer.connect(server)
            with contextlib.suppress(ConnectionError):
                for _ in range(40):
                    raw.writer.write(b"\0" * 65536)
                    await raw.writer.drain()
            with contextlib.suppress(ConnectionError):
                await raw.closed_by_server()
            await raw.close()
            await _still_serves(server, client)

    asyncio.run(main())


def test_an_oversize_record_length_gets_a_goaway_and_a_close():
    async def main():
        async with running_peers(2) as (server, client):
            raw = await RawPeer.connect(server)
            await raw.handshake()
            raw.writer.write(LENGTH.pack(2**31) + b"\0" * 64)
            assert "outside" in await raw.goaway_reason()
            await raw.close()
            await _still_serves(server, client)

    asyncio.run(main())


def test_a_flipped_bit_in_a_record_closes_the_connection():
    async def main():
        async with running_peers(2) as (server, client):
            raw = await RawPeer.connect(server)
            await raw.handshake()
            sealer = raw.sealer
            assert sealer is not None
            body = frames.encode_header(frames.PING, 0, 0, 5)
            record = bytearray(sealer.seal([body], len(body)))
            record[7] ^= 0x04
            raw.writer.write(bytes(record))
            assert "failed authentication" in await raw.goaway_reason()
            await raw.close()
            await _still_serves(server, client)

    asyncio.run(main())


def test_a_replayed_record_closes_the_connection():
    async def main():
        async with running_peers(2) as (server, client):
            raw = await RawPeer.connect(server)
            await raw.handshake()
            record = raw.send_record(frames.encode_header(frames.PING, 0, 0, 9))
            assert frames.parse_frames(await raw.read_record())[0].length == 9  # the PING's ACK
            raw.writer.write(record)  # the same record again
            assert "failed authentication" in await raw.goaway_reason()
            await raw.close()
            await _still_serves(server, client)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("plaintext", "why"),
    [
        (b"\x07" + b"\0" * 9, "unknown frame type"),
        (frames.encode_header(frames.DATA, 0, 1, 5) + b"hello", "unopened stream"),
        (frames.encode_header(frames.DATA, frames.FLAG_SYN, 2, 1) + b"x", "never opened"),
        (
            frames.encode_header(frames.DATA, frames.FLAG_SYN | frames.FLAG_FIN, 1, 0)
            + frames.encode_header(frames.DATA, 0, 1, 1)
            + b"x",
            "after its FIN",
        ),
        (frames.encode_header(frames.DATA, 0, 1, 100), "exceeds its record"),
    ],
)
def test_malformed_frames_in_a_valid_record_close_the_connection(plaintext, why):
    async def main():
        async with running_peers(2) as (server, client):
            raw = await RawPeer.connect(server)
            await raw.handshake()
            for record in plaintext if isinstance(plaintext, list) else [plaintext]:
                raw.send_record(record)
            reason = await raw.goaway_reason()
            assert why in reason
            await raw.close()
            await _still_serves(server, client)

    asyncio.run(main())


def test_frames_sent_before_admission_are_a_violation():
    class SlowAuthorizer(Authorizer):
        async def get_token(self):
            return None

        async def check(self, remote_peer_id, token):
            await asyncio.sleep(0.2)  # the record below arrives while the verdict is pending

    async def main():
        async with running_peers(2, authorizers=[SlowAuthorizer(), AllowAll()]) as (server, client):
            raw = await RawPeer.connect(server)
            header = protocol.encode_request_header(protocol.RequestHeader("test.echo/1"))
            request = MESSAGE_HEADER.pack(REQUEST, len(header)) + header
            await raw.handshake(
                early=frames.encode_header(frames.DATA, frames.FLAG_SYN, 1, len(request)) + request
            )
            assert "before it was admitted" in await raw.goaway_reason()
            await raw.close()
            await _still_serves(server, client)

    asyncio.run(main())


def test_a_sender_that_ignores_flow_control_is_disconnected():
    async def main():
        async with running_peers(2) as (server, client):

            async def never_reads(rpc) -> None:
                await asyncio.sleep(3600)

            server.add_handler("test.stall/1", never_reads)
            raw = await RawPeer.connect(server)
            await raw.handshake()
            header = protocol.encode_request_header(protocol.RequestHeader("test.stall/1"))
            request = MESSAGE_HEADER.pack(REQUEST, len(header)) + header
            raw.send_record(frames.encode_header(frames.DATA, frames.FLAG_SYN, 1, len(request)) + request)
            for _ in range(5):  # 5 MiB against a 4 MiB window, ignoring that no credit came back
                raw.send_record(frames.encode_header(frames.DATA, 0, 1, 1 << 20) + bytes(1 << 20))
            assert "overran its flow-control window" in await raw.goaway_reason()
            await raw.close()
            await _still_serves(server, client)

    asyncio.run(main())


def test_a_malformed_request_resets_only_its_stream():
    async def main():
        async with running_peers(2) as (server, client):
            raw = await RawPeer.connect(server)
            await raw.handshake()
            raw.send_record(frames.encode_header(frames.DATA, frames.FLAG_SYN, 1, 5) + b"\x09\0\0\0\0")
            plaintext = await raw.read_record()
            kinds = [frame.type for frame in frames.parse_frames(plaintext)]
            if frames.RESET not in kinds:
                kinds += [frame.type for frame in frames.parse_frames(await raw.read_record())]
            assert frames.RESET in kinds
            raw.send_record(frames.encode_header(frames.PING, 0, 0, 3))  # the connection lives on
            assert any(f.type == frames.PING for f in frames.parse_frames(await raw.read_record()))
            await raw.close()
            await _still_serves(server, client)

    asyncio.run(main())


@given(st.binary(min_size=1, max_size=200))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzzed_records_after_a_valid_handshake_never_crash_the_server(plaintext):
    async def main():
        async with running_peers(2) as (server, client):
            raw = await RawPeer.connect(server)
            await raw.handshake()
            raw.send_record(plaintext)
            raw.send_record(frames.encode_header(frames.PING, 0, 0, 77))
            with contextlib.suppress(asyncio.IncompleteReadError, NetworkError, asyncio.TimeoutError):
                while True:  # read until the PING's ACK (the record was accepted) or a close
                    found = frames.parse_frames(await asyncio.wait_for(raw.read_record(), 5))
                    if any(f.type == frames.PING and f.length == 77 for f in found):
                        break
            await raw.close()
            await _still_serves(server, client)

    asyncio.run(main())


def test_after_a_tampered_connection_the_next_call_reconnects():
    async def main():
        async with running_peers(3) as (server, client, bystander):
            assert await call_echo(client, server.get_visible_maddrs()[0]) == 2
            assert await call_echo(bystander, server.get_visible_maddrs()[0]) == 2
            conn = client.pool.get_open(server.peer_id)
            assert conn is not None and conn._transport is not None
            # corrupt the client's next record on the wire: seal it, then flip a bit before sending
            transport = conn._transport
            original_write = transport.write

            def corrupting_write(data):
                data = bytearray(data)
                data[-1] ^= 0x80
                transport.write = original_write  # type: ignore[method-assign]
                original_write(bytes(data))

            transport.write = corrupting_write  # type: ignore[method-assign]
            with pytest.raises((RPCError, ConnectionClosedError)):
                await call_echo(client, server.peer_id)
            await asyncio.wait_for(conn.wait_closed(), 5)
            assert "failed authentication" in conn.close_reason
            assert await call_echo(bystander, server.peer_id) == 2  # others are unaffected
            assert await call_echo(client, server.peer_id) == 2  # and the client redials
            assert client.pool.get_open(server.peer_id) is not conn

    asyncio.run(main())


def test_a_restarted_peer_keeps_its_peer_id_and_others_reconnect(tmp_path):
    key = tmp_path / "server.key"

    async def main():
        async with running_peers(1) as (client,):
            from net_helpers import ECHO, echo

            from peer.proto.net_pb2 import Status

            server = await P2P.acreate(identity_path=key)
            server.add_unary_handler(ECHO, echo, Status)
            first_id, address = server.peer_id, server.get_visible_maddrs()[0]
            assert await call_echo(client, address) == 2
            await server.ashutdown()
            with pytest.raises((DialError, ConnectionClosedError, RPCError)):
                await call_echo(client, first_id)
            server = await P2P.acreate(identity_path=key, host_maddrs=[str(address.without_peer_id())])
            try:
                server.add_unary_handler(ECHO, echo, Status)
                assert server.peer_id == first_id
                assert server.get_visible_maddrs()[0] == address
                assert await call_echo(client, first_id) == 2  # by PeerID alone: the pool redials
            finally:
                await server.ashutdown()

    asyncio.run(main())
