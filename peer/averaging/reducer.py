"""`PartReducer`: the reducer side of one butterfly round, for the part of the flat vector this peer owns.

Every other member (a *sender*) streams its values of the part in chunks on its own `avg.reduce` call.
The reducer keeps one accumulator per part: it starts as its own weighted values, each sender's chunk
is added into it (in a worker thread, one hop per chunk: join, decode, add), and once every sender
still taking part contributed chunk k, chunk k is divided by its total weight, written into the flat
vector and streamed back to every sender. A sender whose call fails, or who delivers no chunk for
`sender_timeout` seconds, is excluded; a chunk is always the weighted mean of the senders that
contributed to it, the reducer itself included.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import torch

from peer.averaging.chunks import ReceivedChunk, bad_chunk, offload, recv_chunk, run_together
from peer.averaging.partition import chunk_spans
from peer.compression.base import CompressionInfo
from peer.compression.transfer import encode_tensor, send_encoded
from peer.errors import NetworkError, RPCCode, RPCError
from peer.net.rpc import RPCStream
from peer.utils.aio import timeout_at

if TYPE_CHECKING:
    from peer.averaging.allreduce import ButterflyAllReduce

logger = logging.getLogger(__name__)


class Excluded(Exception):
    """A sender was excluded from the round while its call still ran."""


class PartReducer:
    """The reducer side of one round: accumulates the weighted chunks of this peer's part."""

    def __init__(self, round_: ButterflyAllReduce, start: int, end: int, senders: list[str]):
        self.round = round_
        self.part = round_.flat[start:end]
        self.acc = round_.pool.accumulator(end - start, round_.flat.dtype)
        self.chunks = chunk_spans(0, end - start, round_.chunk_size)
        self.active = set(senders)
        self.contributed: list[set[str]] = [set() for _ in self.chunks]
        self.weights = [0.0] * len(self.chunks)
        self.locks = [asyncio.Lock() for _ in self.chunks]
        self.done = [asyncio.Event() for _ in self.chunks]
        self.ready = asyncio.Event()  # the accumulator holds the reducer's own weighted values
        self.changed = asyncio.Event()
        self.calls: dict[str, RPCStream] = {}
        self.idle = asyncio.Event()
        self.idle.set()

    def exclude(self, sender: str, reason: str) -> None:
        if sender in self.active:
            logger.info("round %s: excluding sender %s: %s", self.round.group_id_hex, sender[:12], reason)
            self.active.discard(sender)
            self.round.result.failed_senders.add(sender)
            self.changed.set()
        rpc = self.calls.get(sender)
        if rpc is not None and not rpc.finished:
            rpc.cancel(RPCCode.DEADLINE_EXCEEDED, f"excluded from the all-reduce: {reason}")

    async def contribute(self, sender: str, k: int, chunk: ReceivedChunk, weight: float) -> None:
        """Add a sender's chunk k, weighted, into the accumulator (one worker-thread hop)."""
        await self.ready.wait()
        async with self.locks[k]:
            if sender not in self.active:
                raise Excluded(sender)
            start, end = self.chunks[k]
            acc = self.acc[start:end]
            try:
                await offload(end - start, chunk.apply, self.round.pool, lambda x: acc.add_(x, alpha=weight))
            except ValueError as e:
                raise bad_chunk(self.calls[sender], str(e)) from None
            self.contributed[k].add(sender)
            self.weights[k] += weight
            self.changed.set()

    def _complete(self, k: int) -> bool:
        return self.active <= self.contributed[k]

    async def run(self, weight: float) -> None:
        """Start from the local values, then finalize chunks in order, excluding senders that stall."""
        loop = asyncio.get_running_loop()
        await offload(self.part.numel(), torch.mul, self.part, weight, out=self.acc)
        for k in range(len(self.chunks)):
            self.contributed[k].add(self.round.me)
            self.weights[k] = weight
        self.ready.set()
        for k, (start, end) in enumerate(self.chunks):
            stall_deadline = loop.time() + self.round.sender_timeout
            while not self._complete(k):
                self.changed.clear()
                try:
                    async with timeout_at(stall_deadline):
                        await self.changed.wait()
                except TimeoutError:
                    for sender in sorted(self.active - self.contributed[k]):
                        self.exclude(sender, f"no chunk {k} within {self.round.sender_timeout} s")
            async with self.locks[k]:
                total = self.weights[k]
                await offload(end - start, torch.div, self.acc[start:end], total, out=self.part[start:end])
            self.done[k].set()
        await self.idle.wait()

    async def serve(self, rpc: RPCStream, weight: float) -> None:
        """The reducer's half of one sender's avg.reduce call."""
        sender = str(rpc.remote_peer_id)
        if sender not in self.active or sender in self.calls:
            raise RPCError(RPCCode.FAILED_PRECONDITION, f"{sender} is not an expected sender of this round")
        self.calls[sender] = rpc
        self.idle.clear()
        try:
            await run_together(self._recv_from(rpc, sender, weight), self._send_to(rpc, sender))
        except (NetworkError, Excluded, asyncio.CancelledError) as e:
            self.exclude(sender, f"its call failed: {type(e).__name__}: {e}")
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            del self.calls[sender]
            if not self.calls:
                self.idle.set()

    async def _recv_from(self, rpc: RPCStream, sender: str, weight: float) -> None:
        hook = self.round.hooks.before_reduce_chunk
        for k, (start, end) in enumerate(self.chunks):
            if hook is not None:
                await hook(sender, k)
            chunk = await recv_chunk(rpc, end - start)
            await self.contribute(sender, k, chunk, weight)

    async def _send_to(self, rpc: RPCStream, sender: str) -> None:
        info = CompressionInfo(size=self.round.flat.numel())
        for k, (start, end) in enumerate(self.chunks):
            await self.done[k].wait()
            if sender not in self.active:
                raise Excluded(sender)
            encoded = await encode_tensor(
                self.part[start:end], self.round.compression, info.for_part(k, end - start)
            )
            await send_encoded(rpc, encoded)
