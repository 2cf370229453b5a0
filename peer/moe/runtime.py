"""`Runtime` and `TaskPool`: batch concurrent requests to each expert and run them in a worker thread.

Each expert has two task pools, forward and backward. A request is a tuple of tensors with a common
batch size; it waits in its pool. A pool is *ready* when its waiting rows reach `min_batch_size`, or
when its oldest request has waited `batch_timeout` seconds (the latency bound). The runtime loop
(one coroutine on the event loop) picks, among the ready pools, the one whose oldest request is
oldest, takes requests in arrival order up to `max_batch_size` rows, concatenates them, and runs the
pool's function in its worker thread (torch releases the GIL). Results are split back per request.
While a batch runs, new requests pile up, so a busy server batches more.

`Runtime.stats` keeps each pool's recent batch sizes and totals (tests read the batch sizes; the CLI
prints throughput from the totals).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from peer.moe.errors import ExpertInputError, MoEError

logger = logging.getLogger(__name__)

ProcessFn = Callable[..., tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class BatchingConfig:
    """How a pool batches: between `min_batch_size` and `max_batch_size` rows, and no request waits
    more than `batch_timeout` seconds for others to join it."""

    min_batch_size: int = 1
    max_batch_size: int = 4096
    batch_timeout: float = 0.01

    def __post_init__(self) -> None:
        if self.min_batch_size < 1:
            raise ValueError(f"min_batch_size must be positive, got {self.min_batch_size}")
        if self.max_batch_size < self.min_batch_size:
            raise ValueError("max_batch_size must be at least min_batch_size")
        if self.batch_timeout < 0:
            raise ValueError(f"batch_timeout must be non-negative, got {self.batch_timeout}")


@dataclass
class PoolStats:
    """Counters of one pool; `batch_sizes` holds the most recent batches' row counts."""

    batch_sizes: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=4096))
    batches: int = 0
    examples: int = 0
    busy_seconds: float = 0.0


@dataclass
class _Task:
    tensors: tuple[torch.Tensor, ...]
    size: int
    created: float
    future: asyncio.Future[tuple[torch.Tensor, ...]]


class TaskPool:
    """The waiting requests of one function (e.g. one expert's forward)."""

    def __init__(self, name: str, process_fn: ProcessFn, config: BatchingConfig):
        self.name = name
        self.process_fn = process_fn
        self.config = config
        self.stats = PoolStats()
        self._tasks: collections.deque[_Task] = collections.deque()
        self._pending_rows = 0
        self._runtime: Runtime | None = None

    async def submit(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Queue one request (tensors sharing a batch size) and wait for its outputs."""
        if self._runtime is None:
            raise MoEError(f"task pool {self.name} is not attached to a running runtime")
        size = int(tensors[0].shape[0])
        if not 0 < size <= self.config.max_batch_size:
            raise ExpertInputError(
                f"{self.name}: batch size {size} is outside 1..{self.config.max_batch_size}"
            )
        loop = asyncio.get_running_loop()
        task = _Task(tuple(tensors), size, loop.time(), loop.create_future())
        self._tasks.append(task)
        self._pending_rows += size
        self._runtime._wake()
        return await task.future

    # ---- used by the runtime loop --------------------------------------------------------------

    def _drop_cancelled(self) -> None:
        while self._tasks and self._tasks[0].future.done():
            self._pending_rows -= self._tasks.popleft().size

    def oldest(self) -> float | None:
        self._drop_cancelled()
        return self._tasks[0].created if self._tasks else None

    def ready_at(self) -> float | None:
        """Loop time at which this pool becomes ready (now or earlier if ready), None if empty."""
        oldest = self.oldest()
        if oldest is None:
            return None
        if self._pending_rows >= self.config.min_batch_size:
            return oldest
        return oldest + self.config.batch_timeout

    def take_batch(self) -> list[_Task]:
        batch: list[_Task] = []
        rows = 0
        while self._tasks:
            task = self._tasks[0]
            if task.future.done():
                self._pending_rows -= self._tasks.popleft().size
                continue
            if batch and rows + task.size > self.config.max_batch_size:
                break
            self._tasks.popleft()
            self._pending_rows -= task.size
            batch.append(task)
            rows += task.size
        return batch

    def run_batch(
        self, tensors_per_task: Sequence[tuple[torch.Tensor, ...]]
    ) -> list[tuple[torch.Tensor, ...]]:
        """(worker thread) Concatenate the requests, run the function, split the outputs."""
        sizes = [int(ts[0].shape[0]) for ts in tensors_per_task]
        if len(tensors_per_task) == 1:
            merged = tensors_per_task[0]
        else:
            merged = tuple(torch.cat(parts) for parts in zip(*tensors_per_task, strict=False))
        outputs = self.process_fn(*merged)
        if len(tensors_per_task) == 1:
            return [outputs]
        split = [out.split(sizes) for out in outputs]
        return [tuple(parts[i] for parts in split) for i in range(len(sizes))]

    def fail_all(self, error: BaseException) -> None:
        while self._tasks:
            task = self._tasks.popleft()
            if not task.future.done():
                task.future.set_exception(error)
        self._pending_rows = 0


class Runtime:
    """Runs the task pools' batches, oldest waiting batch first, in one worker thread."""

    def __init__(self, pools: Sequence[TaskPool] = ()):
        self.pools: dict[str, TaskPool] = {}
        self._wakeup: asyncio.Event | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        for pool in pools:
            self.add_pool(pool)

    def add_pool(self, pool: TaskPool) -> None:
        if pool.name in self.pools:
            raise ValueError(f"a task pool named {pool.name!r} is already added")
        self.pools[pool.name] = pool
        pool._runtime = self

    @property
    def stats(self) -> dict[str, PoolStats]:
        pools = dict(self.pools)  # one atomic copy: pools may be added (on the loop) while others read
        return {name: pool.stats for name, pool in pools.items()}

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def run(self) -> None:
        """Serve batches until cancelled; pending requests then fail with `MoEError`."""
        loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="moe-runtime")
        try:
            while True:
                pool, wait = self._next_pool(loop.time())
                if pool is None:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), wait)
                    except asyncio.TimeoutError:
                        pass
                    continue
                await self._process(pool, loop)
        finally:
            for pool in self.pools.values():
                pool.fail_all(MoEError("the expert server is shutting down"))
            executor, self._executor = self._executor, None
            await loop.run_in_executor(None, executor.shutdown, True)

    def _next_pool(self, now: float) -> tuple[TaskPool | None, float | None]:
        """The ready pool with the oldest request, or (None, seconds until one may be ready)."""
        best: TaskPool | None = None
        best_oldest = 0.0
        next_ready: float | None = None
        for pool in self.pools.values():
            ready_at = pool.ready_at()
            if ready_at is None:
                continue
            if ready_at <= now:
                oldest = pool.oldest()
                assert oldest is not None
                if best is None or oldest < best_oldest:
                    best, best_oldest = pool, oldest
            elif next_ready is None or ready_at < next_ready:
                next_ready = ready_at
        if best is not None:
            return best, None
        return None, None if next_ready is None else max(0.0, next_ready - now)

    async def _process(self, pool: TaskPool, loop: asyncio.AbstractEventLoop) -> None:
        batch = pool.take_batch()
        if not batch:
            return
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, pool.run_batch, [t.tensors for t in batch])
        except asyncio.CancelledError:
            for task in batch:
                if not task.future.done():
                    task.future.set_exception(MoEError("the expert server is shutting down"))
            raise
        except Exception as e:
            logger.warning("expert batch %s of %d rows failed: %s", pool.name, sum(t.size for t in batch), e)
            error = e if isinstance(e, MoEError) else MoEError(f"{pool.name} failed: {type(e).__name__}: {e}")
            for task in batch:
                if not task.future.done():
                    task.future.set_exception(error)
            return
        rows = sum(t.size for t in batch)
        pool.stats.batch_sizes.append(rows)
        pool.stats.batches += 1
        pool.stats.examples += rows
        pool.stats.busy_seconds += time.perf_counter() - started
        for task, result in zip(batch, results, strict=False):
            if not task.future.done():
                task.future.set_result(result)


__all__ = ["BatchingConfig", "PoolStats", "Runtime", "TaskPool"]
