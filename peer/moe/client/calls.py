"""One RPC to one remote expert: `call_info`/`rpc_info`'s client half, forward/backward calls, and
`acall_params` (an expert's weights, for a new replica).

Transport failures become `peer.moe.errors` here, at the boundary:

    the server refused the tensors (INVALID_ARGUMENT, MESSAGE_TOO_LARGE)  -> ExpertInputError
    the deadline passed                                                  -> ExpertTimeoutError
    any other failed call, unreachable peer or closed connection         -> ExpertCallError(.code)

A call sends its tensors in a task of its own while it waits for the answer, so a server that refuses
a request early (from a tensor header) is heard at once, and the rest of the upload is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import torch

from peer.compression import CompressionBase, NoCompression
from peer.compression.transfer import recv_tensor, send_tensor
from peer.errors import NetworkError, RPCCode, RPCDeadlineExceeded, RPCError
from peer.moe import protocol
from peer.moe.errors import ExpertCallError, ExpertInputError, ExpertTimeoutError
from peer.net.p2p import P2P, PeerRef
from peer.net.rpc import RPCStream
from peer.utils.loop import run_coroutine

T = TypeVar("T")

_NO_COMPRESSION = NoCompression()


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """`run_coroutine`, but an exception of `coro` that is a `TimeoutError` comes out as itself.

    (`peer.utils.loop.run_coroutine` re-wraps any `TimeoutError` the coroutine raises, because on
    Python 3.11+ `concurrent.futures.TimeoutError` is the builtin one; this boxes the outcome.)
    """

    async def boxed() -> tuple[bool, Any]:
        try:
            return True, await coro
        except Exception as e:
            return False, e

    ok, value = run_coroutine(boxed())
    if not ok:
        raise value
    return value


def translate_error(uid: str, error: BaseException) -> Exception:
    """The `peer.moe.errors` counterpart of a transport error from a call to expert `uid`."""
    if isinstance(error, (RPCDeadlineExceeded, TimeoutError)):
        return ExpertTimeoutError(uid, RPCCode.DEADLINE_EXCEEDED, str(error))
    if isinstance(error, RPCError):
        if error.code in (RPCCode.INVALID_ARGUMENT, RPCCode.MESSAGE_TOO_LARGE):
            return ExpertInputError(f"expert {uid} refused the request: {error.message}")
        return ExpertCallError(uid, error.code, error.message)
    return ExpertCallError(uid, RPCCode.UNAVAILABLE, f"{type(error).__name__}: {error}")


async def acall_info(
    p2p: P2P, peer: PeerRef, uid: str, *, timeout: float | None = None
) -> protocol.ExpertInfo:
    """The schemas and limits of expert `uid` on `peer`."""
    try:
        message = await p2p.acall_unary(
            peer, protocol.INFO_METHOD, protocol.info_request(uid), protocol.InfoMessage, timeout=timeout
        )
    except (NetworkError, TimeoutError) as e:
        raise translate_error(uid, e) from None
    info = protocol.decode_info(message)
    if info.uid != uid:
        raise ExpertCallError(uid, RPCCode.INTERNAL, f"the server answered for expert {info.uid!r}")
    return info


async def acall_forward(
    p2p: P2P,
    peer: PeerRef,
    uid: str,
    inputs: Sequence[torch.Tensor],
    *,
    timeout: float | None = None,
    compression: CompressionBase = _NO_COMPRESSION,
) -> tuple[torch.Tensor, ...]:
    """Run expert `uid`'s forward pass on a batch: inputs in, outputs back."""
    return await _call(p2p, peer, uid, protocol.FORWARD_METHOD, inputs, timeout, compression)


async def acall_backward(
    p2p: P2P,
    peer: PeerRef,
    uid: str,
    inputs_and_grads: Sequence[torch.Tensor],
    *,
    timeout: float | None = None,
    compression: CompressionBase = _NO_COMPRESSION,
) -> tuple[torch.Tensor, ...]:
    """Run expert `uid`'s backward pass and optimizer step: inputs + output grads in, input grads out."""
    return await _call(p2p, peer, uid, protocol.BACKWARD_METHOD, inputs_and_grads, timeout, compression)


async def acall_params(
    p2p: P2P,
    peer: PeerRef,
    uid: str,
    templates: Sequence[torch.Tensor],
    *,
    timeout: float | None = None,
) -> list[torch.Tensor]:
    """Expert `uid`'s module state (parameters and buffers) from `peer`: one tensor per template, of
    the template's shape and dtype (a mismatch fails the call before its payload is read)."""
    request = protocol.ExpertRequest(uid, 0)
    try:
        async with p2p.open_stream(peer, protocol.PARAMS_METHOD, timeout=timeout) as rpc:
            await protocol.send_request(rpc, request)
            await rpc.close_send()
            count = await protocol.recv_response_header(rpc)
            if count != len(templates):
                message = f"sent {count} tensors, expected {len(templates)}"
                raise ExpertCallError(uid, RPCCode.INTERNAL, message)
            tensors = await protocol.recv_exact_tensors(rpc, templates, what=f"{uid} parameters")
            await rpc.recv()  # the status
            return tensors
    except (NetworkError, TimeoutError) as e:
        raise translate_error(uid, e) from None


async def _call(
    p2p: P2P,
    peer: PeerRef,
    uid: str,
    method: str,
    tensors: Sequence[torch.Tensor],
    timeout: float | None,
    compression: CompressionBase,
) -> tuple[torch.Tensor, ...]:
    codec_id = compression.codec_id if compression.codec_id is not None else 0
    request = protocol.ExpertRequest(uid, len(tensors), protocol.CodecID(codec_id))
    try:
        async with p2p.open_stream(peer, method, timeout=timeout) as rpc:
            sender = asyncio.get_running_loop().create_task(_send_all(rpc, request, tensors, compression))
            try:
                outputs = await _recv_all(rpc)
            except BaseException:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, NetworkError):
                    await sender
                raise
            await sender
            return outputs
    except (NetworkError, TimeoutError) as e:
        raise translate_error(uid, e) from None


async def _send_all(
    rpc: RPCStream,
    request: protocol.ExpertRequest,
    tensors: Sequence[torch.Tensor],
    compression: CompressionBase,
) -> None:
    await protocol.send_request(rpc, request)
    for tensor in tensors:
        await send_tensor(rpc, tensor.detach().cpu(), compression)
    await rpc.close_send()


async def _recv_all(rpc: RPCStream) -> tuple[torch.Tensor, ...]:
    count = await protocol.recv_response_header(rpc)
    outputs = []
    for i in range(count):
        tensor = await recv_tensor(rpc)
        if tensor is None:
            raise RPCError(RPCCode.INTERNAL, f"{rpc.method}: the server sent {i} of {count} tensors")
        outputs.append(tensor)
    await rpc.recv()  # the status: raises if the handler failed after answering
    return tuple(outputs)


__all__ = ["acall_backward", "acall_forward", "acall_info", "acall_params", "run_blocking", "translate_error"]
