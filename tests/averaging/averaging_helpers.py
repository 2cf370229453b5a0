"""Shared helpers of the averaging tests: peers on loopback and explicit groups (no DHT)."""

from __future__ import annotations

import asyncio
import contextlib
import os

import msgpack

from peer.averaging.allreduce import AllReduceService, AllReduceSettings
from peer.averaging.partition import GroupInfo, GroupMember
from peer.compression.base import CompressionBase
from peer.net.p2p import P2P


async def make_peers(n: int, client_modes: tuple[bool, ...] = ()) -> list[P2P]:
    modes = client_modes or (False,) * n
    return [await P2P.acreate(host_maddrs=() if client else ("/ip4/127.0.0.1/tcp/0",)) for client in modes]


async def shutdown_all(peers: list[P2P]) -> None:
    for p2p in peers:
        with contextlib.suppress(Exception):
            await p2p.ashutdown()


def explicit_group(peers: list[P2P], client_modes=None, bandwidths=None, gathers=None) -> GroupInfo:
    n = len(peers)
    client_modes = client_modes or [False] * n
    bandwidths = bandwidths or [1.0] * n
    gathers = gathers or [None] * n
    members = tuple(
        GroupMember(
            peer_id=str(p.peer_id),
            maddrs=tuple(str(m) for m in p.get_visible_maddrs()),
            bandwidth=bandwidths[i],
            client_mode=client_modes[i],
            gather=msgpack.packb(gathers[i]),
        )
        for i, p in enumerate(peers)
    )
    return GroupInfo(group_id=os.urandom(16), members=members)


def services(peers: list[P2P], *, compression: CompressionBase | None = None, settings=None, prefix="test"):
    return [
        AllReduceService(
            p, prefix, compression=compression, settings=settings or AllReduceSettings(chunk_size=1000)
        )
        for p in peers
    ]


async def run_round(svcs, group, flats, weights=None, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    weights = weights or [1.0] * len(svcs)
    return await asyncio.gather(
        *(s.run(group, f, weight=w, deadline=deadline) for s, f, w in zip(svcs, flats, weights, strict=True))
    )


def make_swarm(n: int):
    """n DHT peers on loopback, all bootstrapped from the first."""
    from peer.dht import DHT

    first = DHT(start=True)
    maddrs = [str(m) for m in first.get_visible_maddrs()]
    return [first] + [DHT(initial_peers=maddrs, start=True) for _ in range(n - 1)]


def step_all(averagers, *, weights=None, gathers=None, timeout=15.0):
    """Call `step` on every averager at once (one thread each); their results in order."""
    import threading

    results = [None] * len(averagers)
    weights = weights or [1.0] * len(averagers)
    gathers = gathers or [None] * len(averagers)

    def run(i):
        results[i] = averagers[i].step(weight=weights[i], gather=gathers[i], timeout=timeout)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(averagers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def close_all(averagers, dhts):
    for averager in averagers:
        averager.shutdown()
    for dht in dhts:
        dht.shutdown()
