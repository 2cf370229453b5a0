"""One asyncio event loop per process, running in a daemon thread (DESIGN: concurrency model).

Every peer object in a process (DHTs, averagers, expert servers) shares this loop, which is how one
process hosts a thousand DHT peers. Blocking public APIs submit coroutines here with
`run_coroutine` and wait; their async twins run on the loop directly. After a fork, the child gets a
fresh loop on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_pid: int | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The process's background event loop, started on first use."""
    global _loop, _thread, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or _thread is None or not _thread.is_alive():
            _loop = asyncio.new_event_loop()
            _thread = threading.Thread(target=_loop.run_forever, name="peer-event-loop", daemon=True)
            _thread.start()
            _pid = os.getpid()
        return _loop


def in_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def run_coroutine(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run `coro` on the background loop and wait for its result (from any other thread)."""
    if in_loop_thread():
        coro.close()
        raise RuntimeError(
            "a blocking peer API was called from the peer event loop; use its async twin (await ...a<name>())"
        )
    future = asyncio.run_coroutine_threadsafe(coro, get_loop())
    try:
        concurrent.futures.wait([future], timeout)
    except BaseException:  # e.g. KeyboardInterrupt while waiting: stop the coroutine too
        future.cancel()
        raise
    if not future.done():
        future.cancel()
        raise TimeoutError(f"the operation did not finish within {timeout} s")
    return future.result()  # the coroutine's own result or exception, TimeoutErrors included


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Start `coro` on the background loop and return a concurrent future for its result."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop())
