"""State sharing: a newcomer downloads tensors and metadata from the most advanced peer.

Every non-client averager declares itself a *donor* under `<prefix>.state` (subkey: its PeerID,
value: (priority, addresses)) and serves `<prefix>.avg.state/1`: a `StateHeader` (metadata, tensor
count) then one TENSOR per tensor, from a snapshot taken when the request arrives. The newcomer tries
donors by decreasing priority and keeps what it received only when the whole state arrived and
matches its own tensors' shapes; a donor that dies mid-transfer sends it to the next donor. So a
newcomer never loads half a state.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import torch

from peer.averaging import protocol
from peer.compression.base import CompressionBase
from peer.compression.transfer import recv_tensor, send_tensor
from peer.errors import NetworkError, RPCCode, RPCError
from peer.net.identity import PeerID
from peer.net.p2p import P2P
from peer.net.rpc import RPCStream

logger = logging.getLogger(__name__)

Snapshot = Callable[[], Awaitable[tuple[bytes, list[torch.Tensor]]]]  # -> (metadata, tensors)
StateHook = Callable[[int], Awaitable[None]]  # called by a donor before it sends tensor i (tests)


def state_key(prefix: str) -> str:
    return f"{prefix}.state"


class StateServer:
    """The donor side: serves snapshots of this averager's state."""

    def __init__(
        self,
        p2p: P2P,
        prefix: str,
        schema: bytes,
        snapshot: Snapshot,
        compression: CompressionBase,
        hook: StateHook | None = None,
    ):
        self.p2p, self.schema, self.snapshot, self.compression, self.hook = (
            p2p,
            schema,
            snapshot,
            compression,
            hook,
        )
        self.method = protocol.state_method(prefix)
        p2p.add_handler(self.method, self.rpc_download_state)

    def close(self) -> None:
        self.p2p.rpc.remove_handler(self.method)

    async def rpc_download_state(self, rpc: RPCStream) -> None:
        request = await rpc.recv(protocol.StateRequestProto)
        if request is None or request.schema_hash != self.schema:
            raise RPCError(RPCCode.FAILED_PRECONDITION, "incompatible tensors (schema hash differs)")
        metadata, tensors = await self.snapshot()
        header = protocol.StateHeader(metadata=metadata, num_tensors=len(tensors))
        await rpc.send(protocol.encode_state_header(header))
        for i, tensor in enumerate(tensors):
            if self.hook is not None:
                await self.hook(i)
            await send_tensor(rpc, tensor, self.compression)


async def download_state(
    p2p: P2P,
    prefix: str,
    schema: bytes,
    donors: Sequence[tuple[str, list[str]]],
    like: Sequence[torch.Tensor],
    timeout: float,
) -> tuple[bytes, list[torch.Tensor], str] | None:
    """Try `donors` (peer_id, maddrs) in order; the first complete state wins: (metadata, tensors, donor)."""
    method = protocol.state_method(prefix)
    for peer_id, maddrs in donors:
        try:
            target = PeerID.from_base58(peer_id)
            if maddrs:
                p2p.add_addresses(target, maddrs)
            async with p2p.open_stream(
                target, method, timeout=timeout, first=protocol.encode_state_request(schema)
            ) as rpc:
                header = await rpc.recv(protocol.StateHeaderProto)
                if header is None:
                    raise RPCError(RPCCode.UNAVAILABLE, "the donor sent no state")
                header = protocol.decode_state_header(header)
                if header.num_tensors != len(like):
                    raise ValueError(f"the donor has {header.num_tensors} tensors, we have {len(like)}")
                tensors: list[torch.Tensor] = []
                for mine in like:
                    tensor = await recv_tensor(rpc)
                    if tensor is None or tensor.shape != mine.shape:
                        raise ValueError(f"the donor's tensor {len(tensors)} does not match ours")
                    tensors.append(tensor)
                if await rpc.recv() is not None:
                    raise ValueError("the donor sent more than its state")
            return header.metadata, tensors, peer_id
        except (NetworkError, ValueError) as e:
            logger.info("downloading the state from %s failed (%s); trying the next donor", peer_id[:12], e)
    return None
