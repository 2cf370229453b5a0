"""`BackgroundStep`: one job at a time in a worker thread, for the optimizer's delayed steps.

`submit(job)` first waits for the previous job, so jobs never overlap each other; `wait()` returns
when the current job is done and re-raises its exception, so a failure in the background surfaces in
the caller's next `step()` instead of being lost.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class BackgroundStep:
    """A single-slot background runner (see the module docstring)."""

    def __init__(self, name: str):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: Future[None] | None = None

    @property
    def busy(self) -> bool:
        """Whether a submitted job has not been waited for yet."""
        return self._pending is not None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self._pending = self._executor.submit(job)

    def wait(self) -> None:
        """Block until the pending job (if any) is done; re-raises the exception it raised."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def shutdown(self) -> None:
        try:
            self.wait()
        finally:
            self._executor.shutdown(wait=True)
