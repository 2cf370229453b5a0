"""`ButterflyAllReduce`: one averaging round among a known group, over P2P RPC only (no DHT).

Every member's flat vector is cut into one part per member (`partition.split_part_sizes`). Member i
*reduces* part i: every other member (a *sender*) streams its values of part i to member i in chunks,
member i accumulates the weighted chunks, divides by the total weight and streams the averaged chunk
back to every sender on the same call. Sending, receiving, decoding and reducing overlap chunk by
chunk. A client-mode member reduces nothing (an empty part) and is never dialed; it only sends.

Faults (all bounded by the round's absolute deadline):
- a sender whose call fails, or who delivers no chunk for `sender_timeout` seconds, is *excluded*:
  the reducer finishes the remaining chunks with the remaining senders. A chunk is always the
  weighted mean of the senders that contributed to it, the reducer itself included.
- a reducer whose call fails or stalls leaves the chunks of its part that did not come back with
  this peer's *local* values; chunks that did come back keep the average.
The result names the peers that failed this peer, so `step()` can report who took part.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import torch

from peer.averaging import protocol
from peer.averaging.chunks import BufferPool, bad_chunk, offload, recv_chunk, run_together
from peer.averaging.partition import GroupInfo, GroupMember, chunk_spans, part_spans
from peer.averaging.reducer import PartReducer
from peer.compression.base import CompressionBase, CompressionInfo, NoCompression
from peer.compression.transfer import encode_tensor, send_encoded
from peer.errors import NetworkError, ProtocolViolationError, RPCCode, RPCError
from peer.net.identity import PeerID
from peer.net.p2p import P2P
from peer.net.rpc import RPCStream
from peer.utils.aio import timeout_at

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AllReduceHooks:
    """Points where tests inject faults deterministically (each hook may block, raise or kill a peer).

    `before_send_chunk(reducer_id, chunk_index)` runs on a sender before each chunk it sends;
    `before_reduce_chunk(sender_id, chunk_index)` runs on a reducer before it reads each chunk.
    """

    before_send_chunk: Callable[[str, int], Awaitable[None]] | None = None
    before_reduce_chunk: Callable[[str, int], Awaitable[None]] | None = None


@dataclass
class AllReduceResult:
    """What one round did, seen from one peer."""

    group: GroupInfo
    failed_senders: set[str] = field(default_factory=set)  # excluded from the part this peer reduced
    failed_reducers: set[str] = field(default_factory=set)  # their part (partly) kept local values

    @property
    def participants(self) -> list[str]:
        """The members that took part, as far as this peer could tell."""
        failed = self.failed_senders | self.failed_reducers
        return [m.peer_id for m in self.group.members if m.peer_id not in failed]


class ButterflyAllReduce:
    """One round: `await ButterflyAllReduce(...).run()` averages `flat` in place with the group."""

    def __init__(
        self,
        p2p: P2P,
        group: GroupInfo,
        flat: torch.Tensor,
        *,
        prefix: str,
        weight: float = 1.0,
        compression: CompressionBase | None = None,
        settings: AllReduceSettings | None = None,
        pool: BufferPool | None = None,
    ):
        settings = settings or AllReduceSettings()
        self.p2p, self.group, self.flat, self.prefix, self.weight = p2p, group, flat, prefix, weight
        self.compression = compression or NoCompression()
        self.chunk_size, self.sender_timeout, self.hooks = (
            settings.chunk_size,
            settings.sender_timeout,
            settings.hooks,
        )
        self.pool = pool or BufferPool()
        self.me = str(p2p.peer_id)
        self.index = group.index_of(self.me)
        self.spans = part_spans(group.part_sizes(flat.numel()))
        self.result = AllReduceResult(group)
        self._finished_parts: set[int] = set()
        self.group_id_hex = group.group_id.hex()[:8]
        start, end = self.spans[self.index]
        senders = [m.peer_id for m in group.members if m.peer_id != self.me]
        self.reducer = PartReducer(self, start, end, senders) if end > start else None

    async def run(self, deadline: float) -> AllReduceResult:
        """Average in place; never raises for a failing peer (see the module docstring)."""
        try:
            async with timeout_at(deadline):
                coros = [
                    self._send_part(i, deadline)
                    for i in range(len(self.group.members))
                    if i != self.index and self.spans[i][1] > self.spans[i][0]
                ]
                if self.reducer is not None:
                    coros.append(self.reducer.run(self.weight))
                await run_together(*coros)
        except TimeoutError:
            self._mark_unfinished()
        return self.result

    def _mark_unfinished(self) -> None:
        """At the deadline: whoever has not finished failed us."""
        for i, member in enumerate(self.group.members):
            if i != self.index and self.spans[i][1] > self.spans[i][0] and i not in self._finished_parts:
                self.result.failed_reducers.add(member.peer_id)
        if self.reducer is not None:
            for k, event in enumerate(self.reducer.done):
                if not event.is_set():
                    for sender in list(self.reducer.active - self.reducer.contributed[k]):
                        self.reducer.exclude(sender, "the round passed its deadline")
            for sender in list(self.reducer.calls):
                self.reducer.exclude(sender, "the round passed its deadline")

    def _target(self, member: GroupMember) -> PeerID:
        peer_id = PeerID.from_base58(member.peer_id)
        if member.maddrs:
            self.p2p.add_addresses(peer_id, member.maddrs)
        return peer_id

    async def _send_part(self, i: int, deadline: float) -> None:
        member = self.group.members[i]
        chunks = chunk_spans(*self.spans[i], self.chunk_size)
        received = [0]
        try:
            left = max(deadline - asyncio.get_running_loop().time(), 1e-3)
            method = protocol.reduce_method(self.prefix)
            async with self.p2p.open_stream(self._target(member), method, timeout=left) as rpc:
                await rpc.send(
                    protocol.encode_reduce_request(protocol.ReduceRequest(self.group.group_id, self.weight))
                )
                await run_together(
                    self._send_chunks(rpc, member, chunks), self._recv_averaged(rpc, chunks, received)
                )
                if await rpc.recv() is not None:
                    raise ProtocolViolationError(f"{member.peer_id} sent more than its chunks")
        except (NetworkError, ValueError) as e:
            logger.info(
                "round %s: reducer %s failed after %d of %d chunks: %s",
                self.group_id_hex,
                member.peer_id[:12],
                received[0],
                len(chunks),
                e,
            )
            self.result.failed_reducers.add(member.peer_id)
        else:
            self._finished_parts.add(i)

    async def _send_chunks(self, rpc: RPCStream, member: GroupMember, chunks: list[tuple[int, int]]) -> None:
        info = CompressionInfo(size=self.flat.numel())
        for k, (start, end) in enumerate(chunks):
            if self.hooks.before_send_chunk is not None:
                await self.hooks.before_send_chunk(member.peer_id, k)
            encoded = await encode_tensor(
                self.flat[start:end], self.compression, info.for_part(k, end - start)
            )
            await send_encoded(rpc, encoded)
        await rpc.close_send()

    async def _recv_averaged(
        self, rpc: RPCStream, chunks: list[tuple[int, int]], received: list[int]
    ) -> None:
        """Write each averaged chunk into place once it has fully arrived (a chunk is never half
        written: a reducer that dies mid-chunk leaves that chunk's local values)."""
        for start, end in chunks:
            chunk = await recv_chunk(rpc, end - start)
            target = self.flat[start:end]
            try:
                if chunk.is_raw(target.dtype):
                    await offload(end - start, chunk.copy_into, target)
                else:
                    await offload(end - start, chunk.apply, self.pool, target.copy_)
            except ValueError as e:
                raise bad_chunk(rpc, str(e)) from None
            received[0] += 1


@dataclass(frozen=True)
class AllReduceSettings:
    """Chunking and fault settings of one round (part of `AveragingConfig`)."""

    chunk_size: int = 1 << 20  # elements per streamed chunk
    sender_timeout: float = 3.0  # a sender delivering no chunk for this long is excluded
    hooks: AllReduceHooks = field(default_factory=AllReduceHooks)

    def __post_init__(self) -> None:
        if not isinstance(self.chunk_size, int) or self.chunk_size <= 0:
            raise ValueError(f"chunk_size: expected a positive int, got {self.chunk_size!r}")
        if not self.sender_timeout > 0:
            raise ValueError(f"sender_timeout: expected a positive number, got {self.sender_timeout!r}")


class AllReduceService:
    """Serves `<prefix>.avg.reduce/1` on a P2P and runs rounds; the averager owns one.

    A sender may call before this peer has registered the round (it learned of the group a moment
    later): the call waits up to `request_timeout` for the round to appear.
    """

    def __init__(
        self,
        p2p: P2P,
        prefix: str,
        *,
        compression: CompressionBase | None = None,
        settings: AllReduceSettings | None = None,
        request_timeout: float = 3.0,
    ):
        self.p2p, self.prefix = p2p, protocol.check_prefix(prefix)
        self.compression = compression or NoCompression()
        self.settings = settings or AllReduceSettings()
        self.request_timeout = request_timeout
        self.pool = BufferPool()
        self._rounds: dict[bytes, ButterflyAllReduce] = {}
        self._arrivals: dict[bytes, asyncio.Event] = {}
        self._finished: dict[bytes, None] = {}  # recent group ids, to refuse late calls at once
        p2p.add_handler(protocol.reduce_method(prefix), self.rpc_reduce)

    def close(self) -> None:
        self.p2p.rpc.remove_handler(protocol.reduce_method(self.prefix))

    async def run(
        self, group: GroupInfo, flat: torch.Tensor, *, weight: float, deadline: float
    ) -> AllReduceResult:
        """Average `flat` in place with `group` (this peer must be a member) before `deadline` (loop time)."""
        if group.group_id in self._rounds or group.group_id in self._finished:
            raise ValueError(f"group: round {group.group_id.hex()} already ran here")
        round_ = ButterflyAllReduce(
            self.p2p,
            group,
            flat,
            prefix=self.prefix,
            weight=weight,
            compression=self.compression,
            settings=self.settings,
            pool=self.pool,
        )
        self._rounds[group.group_id] = round_
        self._arrivals.setdefault(group.group_id, asyncio.Event()).set()
        try:
            return await round_.run(deadline)
        finally:
            del self._rounds[group.group_id]
            self._arrivals.pop(group.group_id, None)
            self._finished[group.group_id] = None
            while len(self._finished) > 1024:
                del self._finished[next(iter(self._finished))]

    async def rpc_reduce(self, rpc: RPCStream) -> None:
        message = await rpc.recv(protocol.ReduceRequestProto)
        if message is None:
            raise RPCError(RPCCode.INVALID_ARGUMENT, "avg.reduce needs a ReduceRequest")
        request = protocol.decode_reduce_request(message)
        round_ = await self._find_round(request.group_id)
        if round_.reducer is None:
            raise RPCError(RPCCode.FAILED_PRECONDITION, "this peer reduces no part in this round")
        await round_.reducer.serve(rpc, request.weight)

    async def _find_round(self, group_id: bytes) -> ButterflyAllReduce:
        if group_id not in self._rounds and group_id not in self._finished:
            event = self._arrivals.setdefault(group_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), self.request_timeout)
            except TimeoutError:
                pass
            finally:
                if group_id not in self._rounds:
                    self._arrivals.pop(group_id, None)
        round_ = self._rounds.get(group_id)
        if round_ is None:
            raise RPCError(RPCCode.NOT_FOUND, f"no running all-reduce round {group_id.hex()[:8]} here")
        return round_
