"""The shared background loop and its blocking bridge."""

from __future__ import annotations

import asyncio

import pytest

from peer.errors import RPCDeadlineExceeded
from peer.utils.loop import get_loop, run_coroutine


def test_a_coroutines_own_timeout_error_passes_through_unchanged() -> None:
    async def fails() -> None:
        raise RPCDeadlineExceeded(message="the remote took too long")

    with pytest.raises(RPCDeadlineExceeded, match="the remote took too long"):
        run_coroutine(fails())


def test_waiting_too_long_cancels_the_coroutine() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            get_loop().call_soon(cancelled.set)
            raise

    with pytest.raises(TimeoutError, match=r"within 0\.2 s"):
        run_coroutine(slow(), timeout=0.2)
    run_coroutine(asyncio.wait_for(cancelled.wait(), 5))


def test_blocking_calls_from_the_loop_thread_are_refused() -> None:
    async def nested() -> None:
        run_coroutine(asyncio.sleep(0))

    with pytest.raises(RuntimeError, match="async twin"):
        run_coroutine(nested())
