"""Helpers for the networked DHT tests: swarms of `peer.DHT`s on loopback, in this process."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Iterable, Iterator
from typing import TypeVar

from peer.dht import DHT, DHTConfig
from peer.utils.loop import run_coroutine

T = TypeVar("T")

# short timeouts make a dead peer cost little; no maintenance rounds run during a test
TEST_CONFIG = DHTConfig(request_timeout=2.0, maintenance_period=3600.0)


async def start_swarm(
    count: int, rng: random.Random, *, config: DHTConfig = TEST_CONFIG, wave: int = 16, **kwargs
) -> list[DHT]:
    """`count` server peers: the first alone, then waves that bootstrap from random earlier peers."""
    dhts: list[DHT] = []
    try:
        first = DHT(start=False, config=config, **kwargs)
        dhts.append(first)
        await first.astart()
        while len(dhts) < count:
            wave_dhts = []
            for _ in range(min(wave, count - len(dhts))):
                sources = rng.sample(dhts, min(3, len(dhts)))
                initial = [maddr for dht in sources for maddr in dht.get_visible_maddrs()]
                wave_dhts.append(DHT(initial, start=False, config=config, **kwargs))
            dhts.extend(wave_dhts)
            await asyncio.gather(*(dht.astart() for dht in wave_dhts))
    except BaseException:
        await shutdown_all(dhts)
        raise
    return dhts


async def shutdown_all(dhts: Iterable[DHT]) -> None:
    for dht in dhts:
        await dht.ashutdown()


@contextlib.contextmanager
def running_swarm(count: int, rng: random.Random, **kwargs) -> Iterator[list[DHT]]:
    """A blocking swarm for a test: started on the peer loop, always shut down."""
    dhts = run_coroutine(start_swarm(count, rng, **kwargs))
    try:
        yield dhts
    finally:
        run_coroutine(shutdown_all(dhts))


async def bounded_gather(awaitables: Iterable[Awaitable[T]], limit: int = 16) -> list[T]:
    """`asyncio.gather` with at most `limit` awaitables running at once (a 2-core machine)."""
    semaphore = asyncio.Semaphore(limit)

    async def run(awaitable: Awaitable[T]) -> T:
        async with semaphore:
            return await awaitable

    return list(await asyncio.gather(*(run(awaitable) for awaitable in awaitables)))
