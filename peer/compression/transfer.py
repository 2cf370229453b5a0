"""Sending and receiving tensors over an RPC stream, compressed with any codec.

A tensor goes out as one TENSOR message: a `TensorHeader` (codec, dtype, shape, meta, nbytes) and the
codec's raw payload, written zero-copy from the encoded buffer. The receiver reads the payload into
one fresh `bytearray` and decodes it in place. Encoding and decoding of large tensors run in a worker
thread, never on the event loop (torch releases the GIL).
"""

from __future__ import annotations

import asyncio

import torch

from peer.compression.base import CompressionBase, CompressionInfo, NoCompression, decode
from peer.compression.serialization import EncodedTensor
from peer.errors import ProtocolViolationError, RPCCode
from peer.net.protocol import TensorHeader
from peer.net.rpc import RPCStream

_OFFLOAD_BYTES = 256 * 1024  # tensors at least this large are encoded/decoded in a worker thread
_NO_COMPRESSION = NoCompression()


async def encode_tensor(
    tensor: torch.Tensor, compression: CompressionBase = _NO_COMPRESSION, info: CompressionInfo | None = None
) -> EncodedTensor:
    if _is_view(tensor, compression) or tensor.numel() * tensor.element_size() < _OFFLOAD_BYTES:
        return compression.encode(tensor, info)
    return await asyncio.get_running_loop().run_in_executor(None, compression.encode, tensor, info)


def _is_view(tensor: torch.Tensor, compression: CompressionBase) -> bool:
    """True when encoding is O(1): an uncompressed, contiguous CPU tensor is sent as a view."""
    return type(compression) is NoCompression and tensor.device.type == "cpu" and tensor.is_contiguous()


async def send_tensor(
    rpc: RPCStream,
    tensor: torch.Tensor,
    compression: CompressionBase = _NO_COMPRESSION,
    info: CompressionInfo | None = None,
) -> None:
    """Encode `tensor` with `compression` and send it as one TENSOR message."""
    await send_encoded(rpc, await encode_tensor(tensor, compression, info))


async def send_encoded(rpc: RPCStream, encoded: EncodedTensor) -> None:
    header = encoded.to_header_dict()
    await rpc.send_tensor_bytes(
        TensorHeader(
            dtype=header["dtype"],
            shape=tuple(header["shape"]),
            codec=int(header["codec"]),
            nbytes=encoded.payload_nbytes,
            meta=header["meta"],
        ),
        encoded.payload,
    )


async def recv_encoded(rpc: RPCStream) -> EncodedTensor | None:
    """The next TENSOR message, validated but not decoded (None when the call ends)."""
    header = await rpc.recv_tensor_header()
    if header is None:
        return None
    payload = bytearray(header.nbytes)
    await rpc.readinto(memoryview(payload))
    try:
        return EncodedTensor.from_header_dict(
            {"codec": header.codec, "dtype": header.dtype, "shape": list(header.shape), "meta": header.meta},
            payload,
        )
    except ValueError as e:
        rpc.cancel(RPCCode.INVALID_ARGUMENT, f"bad tensor: {e}")
        raise ProtocolViolationError(f"{rpc.remote_peer_id} sent a bad tensor: {e}") from None


async def decode_tensor(encoded: EncodedTensor) -> torch.Tensor:
    if encoded.payload_nbytes >= _OFFLOAD_BYTES:
        return await asyncio.get_running_loop().run_in_executor(None, decode, encoded)
    return decode(encoded)


async def recv_tensor(rpc: RPCStream) -> torch.Tensor | None:
    """Receive and decode the next tensor (None when the call ends)."""
    encoded = await recv_encoded(rpc)
    if encoded is None:
        return None
    try:
        return await decode_tensor(encoded)
    except ValueError as e:
        rpc.cancel(RPCCode.INVALID_ARGUMENT, f"undecodable tensor: {e}")
        raise ProtocolViolationError(f"{rpc.remote_peer_id} sent an undecodable tensor: {e}") from None
