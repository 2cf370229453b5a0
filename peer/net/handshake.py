"""The connection handshake: version check, Noise XX, identity binding and admission.

    both sides   hello: u8 length + protocol id (PROTOCOL_ID); a mismatch ends the connection
    initiator -> u16 length + Noise message 1 (e)
    responder -> u16 length + Noise message 2 (e, ee, s, es + payload)
    initiator -> u16 length + Noise message 3 (s, se + payload)
    responder -> first record: PING/ACK 0 (admitted) or GOAWAY (refused, with the reason)

Each payload (`NoiseHandshakePayload`) carries the libp2p identity key and its signature of
"noise-libp2p-static-key:" + the Noise static key, which binds the encrypted channel to the PeerID,
plus an optional access token that the other side's `Authorizer` checks. The Noise prologue is both
hellos, so a downgrade of the hello breaks the handshake.
"""

from __future__ import annotations

import asyncio
import functools
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from peer.errors import (
    AuthorizationError,
    HandshakeError,
    IncompatibleProtocolError,
    PeerIDMismatchError,
)
from peer.net import protocol
from peer.net.auth import Authorizer
from peer.net.connection import Connection
from peer.net.identity import Identity, PeerID, deserialize_public_key, verify_signature
from peer.net.noise import XXHandshake

_U16 = struct.Struct(">H")


@dataclass(frozen=True)
class HandshakeResult:
    remote_peer_id: PeerID
    remote_token: bytes | None


@dataclass(frozen=True)
class StaticKey:
    """A host's Noise static key and its identity's signature of it, made once per host (as libp2p
    hosts do). Each connection still gets its own secrets from the fresh ephemeral keys; making the
    static key, signing it and checking the remote's signature again on every connection cost about
    a third of a DHT lookup's handshake crypto at 1024 peers."""

    private: X25519PrivateKey
    public: bytes
    signature: bytes

    @classmethod
    def for_identity(cls, identity: Identity) -> StaticKey:
        private = X25519PrivateKey.generate()
        public = private.public_key().public_bytes_raw()
        return cls(private, public, identity.sign(protocol.STATIC_KEY_SIGNATURE_PREFIX + public))


def hello_bytes() -> bytes:
    return protocol.PROTOCOL_ID.encode()


async def _read_hello(conn: Connection) -> bytes:
    (length,) = await conn.read_raw(1)
    remote = await conn.read_raw(length)
    if remote != hello_bytes():
        shown = remote.decode("ascii", "replace")
        raise IncompatibleProtocolError(
            f"peer at {conn.remote_address} speaks {shown!r}, this peer speaks {protocol.PROTOCOL_ID!r}; "
            "both must run compatible hivemind-platform versions"
        )
    return remote


async def _read_message(conn: Connection) -> bytes:
    (length,) = _U16.unpack(await conn.read_raw(2))
    return await conn.read_raw(length)


def _write_message(conn: Connection, message: bytes) -> None:
    if len(message) > protocol.MAX_HANDSHAKE_MESSAGE:
        raise HandshakeError("handshake message too large")
    conn.write_raw(_U16.pack(len(message)) + message)


def _make_payload(identity: Identity, static: StaticKey, token: bytes | None, max_record: int) -> bytes:
    return protocol.encode_handshake_payload(
        protocol.HandshakePayload(
            identity_key=identity.peer_id.to_bytes()[2:],
            identity_sig=static.signature,
            access_token=token,
            max_record_size=max_record,
        )
    )


@functools.lru_cache(maxsize=4096)
def _bound_peer_id(identity_key: bytes, signature: bytes, remote_static: bytes) -> PeerID | None:
    """The PeerID of `identity_key` when `signature` is its signature of the Noise key
    `remote_static`, else None. Cached (a pure function of its three values): a peer that connects
    again presents the same three, since its static key lives as long as its host. An unusable key
    raises ValueError, which is not cached."""
    public_key = deserialize_public_key(identity_key)
    if not verify_signature(public_key, signature, protocol.STATIC_KEY_SIGNATURE_PREFIX + remote_static):
        return None
    return PeerID.from_public_key(public_key)


def _verify_payload(data: bytes, remote_static: bytes | None) -> tuple[PeerID, protocol.HandshakePayload]:
    payload = protocol.decode_handshake_payload(data)
    try:
        remote_id = (
            None
            if remote_static is None
            else _bound_peer_id(payload.identity_key, payload.identity_sig, remote_static)
        )
    except ValueError as e:
        raise HandshakeError(f"the remote's identity key is unusable: {e}") from None
    if remote_id is None:
        raise HandshakeError(
            "the remote's identity signature does not cover its Noise key (man in the middle?)"
        )
    if protocol.MUXER_ID not in payload.stream_muxers:
        raise IncompatibleProtocolError(
            f"the remote offers multiplexers {list(payload.stream_muxers)}, "
            f"this peer needs {protocol.MUXER_ID}"
        )
    return remote_id, payload


async def perform_handshake(
    conn: Connection,
    identity: Identity,
    authorizer: Authorizer,
    expected_peer_id: PeerID | None = None,
    static: StaticKey | None = None,
) -> HandshakeResult:
    """Run the handshake on a fresh connection; on success the connection is in the record phase.

    `static` is the host's `StaticKey` (one is made for this connection when it is None). Raises
    HandshakeError (or a subclass) when the channel cannot be set up, AuthorizationError when either
    side refuses the other. The caller closes the connection on any error.
    """
    static = static or StaticKey.for_identity(identity)
    hello = hello_bytes()
    remote_hello = await _read_hello(conn)
    prologue = hello + remote_hello if conn.initiator else remote_hello + hello
    noise = XXHandshake(conn.initiator, static.private, prologue=prologue, static_public=static.public)
    token = await authorizer.get_token()
    max_record = conn.config.max_record_size
    if conn.initiator:
        _write_message(conn, noise.write_message(b""))
        remote_id, payload = _verify_payload(
            noise.read_message(await _read_message(conn)), noise.remote_static
        )
        if expected_peer_id is not None and remote_id != expected_peer_id:
            raise PeerIDMismatchError(
                f"dialed {conn.remote_address} expecting peer {expected_peer_id}, "
                f"but it proved to be {remote_id}"
            )
        await _check(authorizer, remote_id, payload.access_token)
        _write_message(conn, noise.write_message(_make_payload(identity, static, token, max_record)))
    else:
        noise.read_message(await _read_message(conn))
        _write_message(conn, noise.write_message(_make_payload(identity, static, token, max_record)))
        remote_id, payload = _verify_payload(
            noise.read_message(await _read_message(conn)), noise.remote_static
        )
    send_key, recv_key = noise.split()
    conn.remote_peer_id = remote_id
    conn.remote_token = payload.access_token
    conn.install_keys(send_key, recv_key, payload.max_record_size)
    if conn.initiator:
        await conn.wait_admission()
    else:
        try:
            await _check(authorizer, remote_id, payload.access_token)
        except AuthorizationError as e:
            conn.refuse(str(e))
            raise
        conn.admit()
    return HandshakeResult(remote_id, payload.access_token)


async def _check(authorizer: Authorizer, remote_id: PeerID, token: bytes | None) -> None:
    try:
        await authorizer.check(remote_id, token)
    except AuthorizationError:
        raise
    except Exception as e:  # a broken authorizer must not let a peer in
        raise AuthorizationError(f"the authorizer failed: {type(e).__name__}: {e}") from e


async def handshake_with_timeout(
    conn: Connection,
    identity: Identity,
    authorizer: Authorizer,
    expected_peer_id: PeerID | None,
    timeout: float,
    static: StaticKey | None = None,
) -> HandshakeResult:
    try:
        return await asyncio.wait_for(
            perform_handshake(conn, identity, authorizer, expected_peer_id, static), timeout
        )
    except asyncio.TimeoutError:
        raise HandshakeError(
            f"handshake with {conn.remote_address} timed out after {timeout:.1f} s"
        ) from None
