"""Shared helpers for the transport tests: peers on loopback, started and shut down per test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from peer.net.auth import Authorizer
from peer.net.config import TransportConfig
from peer.net.p2p import P2P
from peer.net.rpc import RPCStream
from peer.proto.net_pb2 import Status

ECHO = "test.echo/1"


async def echo(request: Status, rpc: RPCStream) -> Status:
    return Status(code=request.code + 1, message=request.message)


@contextlib.asynccontextmanager
async def running_peers(
    count: int = 2, *, config: TransportConfig | None = None, authorizers: list[Authorizer] | None = None
) -> AsyncIterator[list[P2P]]:
    """`count` listening peers on 127.0.0.1, each serving ECHO; all shut down on exit."""
    peers: list[P2P] = []
    try:
        for index in range(count):
            authorizer = authorizers[index] if authorizers else None
            p2p = await P2P.acreate(config=config, authorizer=authorizer)
            p2p.add_unary_handler(ECHO, echo, Status)
            peers.append(p2p)
        yield peers
    finally:
        for p2p in peers:
            await p2p.ashutdown()


async def call_echo(caller: P2P, target, value: int = 1, timeout: float = 5.0) -> int:
    reply = await caller.acall_unary(target, ECHO, Status(code=value, message="hi"), Status, timeout=timeout)
    assert reply.message == "hi"
    return reply.code


async def wait_for(predicate, timeout: float = 5.0) -> None:
    """Poll `predicate()` until it is true (the tests never assert on timing, only on outcomes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
