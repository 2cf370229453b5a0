"""Starting and stopping a `SwarmMonitor` from outside the peer event loop.

The site's lifespan (`create_app`) and `hivemind-site monitor` both run the monitor on the process's
peer event loop, where its DHT peers live, and stop it from their own thread: `start()` returns at
once, `stop()` asks the monitor to leave every swarm and waits until it has.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import threading

from backend.monitor.monitor import SwarmMonitor
from peer.utils.loop import get_loop, submit

logger = logging.getLogger(__name__)


class MonitorService:
    """A running `SwarmMonitor` (see the module docstring)."""

    def __init__(self, monitor: SwarmMonitor):
        self.monitor = monitor
        self._future: concurrent.futures.Future[None] | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    @property
    def running(self) -> bool:
        return self._future is not None and not self._future.done()

    def start(self) -> None:
        if self._future is not None:
            raise RuntimeError("this monitor service was already started")
        self._future = submit(self._main())
        self._future.add_done_callback(self._log_crash)
        self._ready.wait(10.0)
        logger.info("The swarm monitor is running (every %.0f s)", self.monitor.config.interval_s)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._ready.set()
        await self.monitor.arun(self._stop)

    def _log_crash(self, future: concurrent.futures.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            logger.error("The swarm monitor stopped on an error", exc_info=future.exception())

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the monitor to stop, and wait (up to `timeout` seconds) until it left every swarm."""
        if self._future is None or self._future.done():
            return
        if self._stop is not None:
            get_loop().call_soon_threadsafe(self._stop.set)
        try:
            self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            logger.warning("The swarm monitor did not stop within %.0f s; cancelling it", timeout)
            self._future.cancel()
        except Exception:  # already logged by _log_crash
            pass
        logger.info("The swarm monitor stopped")


def wait_for_signal(service: MonitorService | None = None) -> str | None:
    """Block the main thread until SIGINT or SIGTERM (returns the signal's name) or until `service`
    stops running by itself (returns None)."""
    received: list[str] = []
    done = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        done.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not done.wait(0.5):
            if service is not None and not service.running:
                return None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return received[0]
