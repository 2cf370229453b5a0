"""The MoE wire protocol, and the only module of `peer.moe` that touches its generated protobuf classes.

    moe.info/1      unary: ExpertInfoRequest(uid) -> ExpertInfo (schemas, max batch size, class)
    moe.forward/1   ExpertRequest(uid, num_tensors, response_codec), then the input tensors, then FIN;
                    the server answers ExpertResponse(num_tensors), then the output tensors, then STATUS
    moe.backward/1  as forward: inputs followed by output gradients in; input gradients out
    moe.params/1    ExpertRequest(uid, 0, response_codec); the server answers ExpertResponse(n), then
                    the expert module's n parameters and buffers (`state_dict` order), then STATUS

Tensors travel as transport TENSOR messages (`peer.compression.transfer`): a header, then the raw
payload, streamed with the transport's flow control. The server checks every tensor header against
the expert's schema *before* it reads the payload, so an oversized or mistyped tensor is refused
without being received. Everything outside this module sees the dataclasses below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from peer.compression import CodecID, EncodedTensor
from peer.compression.serialization import DTYPE_NAMES
from peer.compression.transfer import decode_tensor
from peer.errors import ProtocolViolationError, RPCCode, RPCError
from peer.moe.schema import TensorSchema
from peer.net.protocol import TensorHeader
from peer.net.rpc import RPCStream
from peer.proto import moe_pb2

INFO_METHOD = "moe.info/1"
FORWARD_METHOD = "moe.forward/1"
BACKWARD_METHOD = "moe.backward/1"
PARAMS_METHOD = "moe.params/1"
METHODS = (INFO_METHOD, FORWARD_METHOD, BACKWARD_METHOD, PARAMS_METHOD)
_PAYLOAD_SLACK = 64 * 1024  # codec metadata beyond the raw bytes of a batch


@dataclass(frozen=True)
class ExpertInfo:
    """What a client needs to call an expert: its schemas and limits."""

    uid: str
    expert_cls: str
    args_schema: tuple[TensorSchema, ...]
    outputs_schema: tuple[TensorSchema, ...]
    max_batch_size: int


@dataclass(frozen=True)
class ExpertRequest:
    uid: str
    num_tensors: int
    response_codec: CodecID = CodecID.NONE


def info_request(uid: str) -> moe_pb2.ExpertInfoRequest:
    return moe_pb2.ExpertInfoRequest(uid=uid)


InfoRequestMessage = moe_pb2.ExpertInfoRequest
InfoMessage = moe_pb2.ExpertInfo


def encode_info(info: ExpertInfo) -> moe_pb2.ExpertInfo:
    return moe_pb2.ExpertInfo(
        uid=info.uid,
        expert_cls=info.expert_cls,
        args_schema=[_encode_schema(s) for s in info.args_schema],
        outputs_schema=[_encode_schema(s) for s in info.outputs_schema],
        max_batch_size=info.max_batch_size,
    )


def decode_info(message: moe_pb2.ExpertInfo) -> ExpertInfo:
    try:
        return ExpertInfo(
            uid=message.uid,
            expert_cls=message.expert_cls,
            args_schema=tuple(_decode_schema(s) for s in message.args_schema),
            outputs_schema=tuple(_decode_schema(s) for s in message.outputs_schema),
            max_batch_size=int(message.max_batch_size),
        )
    except ValueError as e:
        raise ProtocolViolationError(f"malformed expert info: {e}") from None


def _encode_schema(schema: TensorSchema) -> moe_pb2.TensorSchema:
    return moe_pb2.TensorSchema(shape=list(schema.shape), dtype=schema.dtype_name)


def _decode_schema(message: moe_pb2.TensorSchema) -> TensorSchema:
    return TensorSchema.from_wire(list(message.shape), message.dtype)


async def send_request(rpc: RPCStream, request: ExpertRequest) -> None:
    message = moe_pb2.ExpertRequest(
        uid=request.uid, num_tensors=request.num_tensors, response_codec=int(request.response_codec)
    )
    await rpc.send(message)


async def recv_request(rpc: RPCStream) -> ExpertRequest:
    message = await rpc.recv(moe_pb2.ExpertRequest)
    if message is None:
        raise RPCError(RPCCode.INVALID_ARGUMENT, "expected an ExpertRequest")
    try:
        codec = CodecID(message.response_codec)
    except ValueError:
        raise RPCError(RPCCode.INVALID_ARGUMENT, f"unknown response codec {message.response_codec}") from None
    return ExpertRequest(message.uid, int(message.num_tensors), codec)


async def send_response_header(rpc: RPCStream, num_tensors: int) -> None:
    await rpc.send(moe_pb2.ExpertResponse(num_tensors=num_tensors))


async def recv_response_header(rpc: RPCStream) -> int:
    message = await rpc.recv(moe_pb2.ExpertResponse)
    if message is None:
        raise RPCError(RPCCode.UNAVAILABLE, f"{rpc.method}: the server sent no response")
    return int(message.num_tensors)


async def recv_checked_tensors(
    rpc: RPCStream, schemas: tuple[TensorSchema, ...], *, max_batch_size: int, what: str
) -> list[torch.Tensor]:
    """Receive one tensor per schema, refusing (INVALID_ARGUMENT / MESSAGE_TOO_LARGE) any tensor whose
    header does not fit, before its payload is read."""
    tensors: list[torch.Tensor] = []
    batch_size: int | None = None
    for i, schema in enumerate(schemas):
        header = await rpc.recv_tensor_header()
        if header is None:
            raise RPCError(RPCCode.INVALID_ARGUMENT, f"{what}: got {i} tensors, expected {len(schemas)}")
        label = f"{what} tensor {i}"
        try:
            schema.check(header.shape, header.dtype, what=label)
        except ValueError as e:
            raise RPCError(RPCCode.INVALID_ARGUMENT, str(e)) from None
        rows = int(header.shape[0])
        if rows > max_batch_size:
            raise RPCError(RPCCode.MESSAGE_TOO_LARGE, f"{label}: batch size {rows} exceeds {max_batch_size}")
        if batch_size is not None and rows != batch_size:
            raise RPCError(RPCCode.INVALID_ARGUMENT, f"{label}: batch size {rows}, expected {batch_size}")
        batch_size = rows
        if header.nbytes > rows * schema.row_nbytes() + _PAYLOAD_SLACK:
            raise RPCError(RPCCode.MESSAGE_TOO_LARGE, f"{label}: {header.nbytes} bytes is too large")
        tensors.append(await _read_payload(rpc, header, label))
    if batch_size == 0:
        raise RPCError(RPCCode.INVALID_ARGUMENT, f"{what}: empty batch")
    return tensors


async def recv_exact_tensors(
    rpc: RPCStream, templates: Sequence[torch.Tensor], *, what: str
) -> list[torch.Tensor]:
    """Receive one tensor per template, each with exactly the template's shape and dtype (checked from
    its header, before the payload is read); `ProtocolViolationError` otherwise."""
    tensors: list[torch.Tensor] = []
    for i, template in enumerate(templates):
        header = await rpc.recv_tensor_header()
        label = f"{what} tensor {i}"
        if header is None:
            raise ProtocolViolationError(f"{what}: got {i} tensors, expected {len(templates)}")
        if tuple(header.shape) != tuple(template.shape) or header.dtype != DTYPE_NAMES.get(template.dtype):
            raise ProtocolViolationError(
                f"{label} is {header.dtype}{list(header.shape)}, expected "
                f"{DTYPE_NAMES.get(template.dtype)}{list(template.shape)}"
            )
        if header.nbytes > template.numel() * template.element_size() + _PAYLOAD_SLACK:
            raise ProtocolViolationError(f"{label}: {header.nbytes} bytes is too large")
        tensors.append(await _read_payload(rpc, header, label))
    return tensors


async def _read_payload(rpc: RPCStream, header: TensorHeader, label: str) -> torch.Tensor:
    payload = bytearray(header.nbytes)
    await rpc.readinto(memoryview(payload))
    try:
        encoded = EncodedTensor.from_header_dict(
            {"codec": header.codec, "dtype": header.dtype, "shape": list(header.shape), "meta": header.meta},
            payload,
        )
        return await decode_tensor(encoded)
    except ValueError as e:
        raise RPCError(RPCCode.INVALID_ARGUMENT, f"{label} does not decode: {e}") from None


__all__ = [
    "BACKWARD_METHOD",
    "FORWARD_METHOD",
    "INFO_METHOD",
    "METHODS",
    "PARAMS_METHOD",
    "ExpertInfo",
    "ExpertRequest",
    "InfoMessage",
    "InfoRequestMessage",
    "decode_info",
    "encode_info",
    "info_request",
    "recv_checked_tensors",
    "recv_exact_tensors",
    "recv_request",
    "recv_response_header",
    "send_request",
    "send_response_header",
]
