"""Wire constants of the transport and the only module that touches its generated protobuf classes.

Everything else in `peer.net` sees the frozen dataclasses below. Decoding never trusts its input:
malformed bytes raise `ProtocolViolationError` (or `HandshakeError` in the handshake).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from peer.errors import HandshakeError, ProtocolViolationError
from peer.proto import net_pb2

# Sent by both sides when a TCP connection opens; a different string means an incompatible peer.
PROTOCOL_ID = "/hmp/1.0.0/noise-xx-25519-aesgcm-sha256"
MUXER_ID = "/hmp/mux/1"
# libp2p-noise binds the Noise static key to the identity key by signing this prefix + the key.
STATIC_KEY_SIGNATURE_PREFIX = b"noise-libp2p-static-key:"
MAX_HANDSHAKE_MESSAGE = 65535  # Noise's message limit; each handshake message has a u16 length


@dataclass(frozen=True)
class HandshakePayload:
    identity_key: bytes
    identity_sig: bytes
    stream_muxers: tuple[str, ...] = (MUXER_ID,)
    access_token: bytes | None = None
    max_record_size: int = 0


@dataclass(frozen=True)
class RequestHeader:
    method: str
    timeout_ms: int = 0
    metadata: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Status:
    code: int
    message: str = ""


@dataclass(frozen=True)
class TensorHeader:
    dtype: str
    shape: tuple[int, ...]
    codec: int
    nbytes: int
    meta: bytes = b""


def encode_handshake_payload(payload: HandshakePayload) -> bytes:
    message = net_pb2.NoiseHandshakePayload(
        identity_key=payload.identity_key, identity_sig=payload.identity_sig
    )
    message.extensions.stream_muxers.extend(payload.stream_muxers)
    if payload.access_token:
        message.extensions.access_token = payload.access_token
    message.extensions.max_record_size = payload.max_record_size
    return message.SerializeToString()


def decode_handshake_payload(data: bytes) -> HandshakePayload:
    message = net_pb2.NoiseHandshakePayload()
    try:
        message.ParseFromString(data)
    except DecodeError as e:
        raise HandshakeError(f"malformed handshake payload: {e}") from None
    return HandshakePayload(
        identity_key=message.identity_key,
        identity_sig=message.identity_sig,
        stream_muxers=tuple(message.extensions.stream_muxers),
        access_token=message.extensions.access_token or None,
        max_record_size=message.extensions.max_record_size,
    )


def encode_request_header(header: RequestHeader) -> bytes:
    return net_pb2.RequestHeader(
        method=header.method, timeout_ms=header.timeout_ms, metadata=header.metadata
    ).SerializeToString()


def decode_request_header(data: bytes) -> RequestHeader:
    message = net_pb2.RequestHeader()
    try:
        message.ParseFromString(data)
    except DecodeError as e:
        raise ProtocolViolationError(f"malformed RPC request header: {e}") from None
    return RequestHeader(
        method=message.method, timeout_ms=message.timeout_ms, metadata=dict(message.metadata)
    )


def encode_status(status: Status) -> bytes:
    return net_pb2.Status(code=status.code, message=status.message).SerializeToString()


def decode_status(data: bytes) -> Status:
    message = net_pb2.Status()
    try:
        message.ParseFromString(data)
    except DecodeError as e:
        raise ProtocolViolationError(f"malformed RPC status: {e}") from None
    return Status(code=message.code, message=message.message)


def encode_tensor_header(header: TensorHeader) -> bytes:
    return net_pb2.TensorHeader(
        dtype=header.dtype, shape=header.shape, codec=header.codec, meta=header.meta, nbytes=header.nbytes
    ).SerializeToString()


def decode_tensor_header(data: bytes) -> TensorHeader:
    message = net_pb2.TensorHeader()
    try:
        message.ParseFromString(data)
    except DecodeError as e:
        raise ProtocolViolationError(f"malformed tensor header: {e}") from None
    return TensorHeader(
        dtype=message.dtype,
        shape=tuple(message.shape),
        codec=message.codec,
        nbytes=message.nbytes,
        meta=message.meta,
    )
