"""The swarm monitor: every `interval_s`, every active run's swarm is read and the reading stored.

`SwarmMonitor` runs on the peer event loop (`peer.utils.loop`), where its DHT peers live. Before each
poll it takes or renews the database's lease (`backend.monitor.lease`): only the lease's holder polls,
so two monitors on one database never both write; the others stand by (with no DHT peers) and take over
when the holder stops or dies. Each poll:

1. loads the active runs from the database (in a worker thread, like every database call here);
2. starts a `RunWatcher` for each new run, and restarts one whose initial peers or auth changed;
3. reads every run concurrently (one task group; a run that fails or times out is recorded as a
   failed poll and never stops the others) and stores each reading with
   `backend.monitor.store.record_reading`;
4. calls the hooks (e.g. a checkpoint saver) with the run and its DHT, at most one call in flight
   per hook and run, in the background.

Runs without initial peers are skipped: their swarm cannot be found. `apoll_once` alone (as in
`hivemind-site monitor --once`) is a one-off poll that does not ask for the lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from backend.models import AuthMode, Run, RunStatus
from backend.monitor.accounting import ClaimRules
from backend.monitor.lease import Lease, default_ttl
from backend.monitor.records import SwarmReading
from backend.monitor.retention import RetentionPolicy, RetentionTier
from backend.monitor.store import (
    RunAccounting,
    StoreOptions,
    record_failure,
    record_reading,
    record_unwatched,
)
from backend.monitor.watcher import RunSpec, RunWatcher
from backend.presenters import manifest
from backend.services.runs import run_authority
from backend.services.swarm import expert_grid
from backend.settings import Settings
from peer.dht import DHT
from peer.utils.aio import TaskGroup, timeout
from peer.utils.loop import run_coroutine

logger = logging.getLogger(__name__)

MonitorHook = Callable[[RunSpec, DHT], Awaitable[None]]


@dataclass(frozen=True)
class MonitorConfig:
    interval_s: float = 10.0
    poll_timeout_s: float = 30.0
    identity_dir: Path = Path("./hivemind-site-monitor")
    token_lifetime_s: float = 6 * 3600.0
    public_url: str = "http://127.0.0.1:8000"  # for the manifests handed to hooks
    tolerance: float = 4.0
    max_samples_per_second: float = 1e6
    store: StoreOptions = field(default_factory=StoreOptions)
    lease_ttl_s: float | None = None  # None: backend.monitor.lease.default_ttl

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.poll_timeout_s <= 0:
            raise ValueError("interval_s and poll_timeout_s must be positive")
        if self.lease_ttl_s is not None and self.lease_ttl_s <= self.interval_s:
            raise ValueError("lease_ttl_s must be longer than interval_s (the lease is renewed every poll)")

    def lease_ttl(self) -> float:
        if self.lease_ttl_s is not None:
            return self.lease_ttl_s
        return default_ttl(self.interval_s, self.poll_timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> MonitorConfig:
        retention = RetentionPolicy(
            (
                RetentionTier(settings.monitor_retention_raw_s, 60),
                RetentionTier(settings.monitor_retention_minute_s, 3600),
                RetentionTier(settings.monitor_retention_hour_s, 24 * 3600),
            )
        )
        store = StoreOptions(
            offline_after_s=max(
                settings.monitor_interval_s * settings.monitor_offline_after_intervals,
                settings.monitor_offline_min_s,
            ),
            half_life_s=settings.leaderboard_half_life_s,
            retention=retention,
        )
        return cls(
            interval_s=settings.monitor_interval_s,
            poll_timeout_s=settings.monitor_poll_timeout_s,
            identity_dir=settings.monitor_identity_dir,
            token_lifetime_s=float(settings.token_lifetime_s),
            public_url=settings.public_url,
            tolerance=settings.sanity_tolerance,
            max_samples_per_second=settings.sanity_max_samples_per_second,
            store=store,
        )


class SwarmMonitor:
    """Reads every active run's swarm and stores what it finds (see the module docstring)."""

    def __init__(
        self,
        config: MonitorConfig,
        session_factory: sessionmaker[Session],
        *,
        secret_key: str,
        clock: Callable[[], float] = time.time,
        hooks: Sequence[MonitorHook] = (),
    ):
        self.config = config
        self.session_factory = session_factory
        self._secret_key = secret_key
        self.clock = clock
        self.hooks = list(hooks)
        self.watchers: dict[int, RunWatcher] = {}
        self._hook_tasks: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._group: TaskGroup | None = None
        self.lease = Lease(session_factory, ttl_s=config.lease_ttl())  # on the real clock, not `clock`
        self._holding: bool | None = None  # whether this monitor held the lease at its last try

    # ---- the loop ------------------------------------------------------------------------------

    async def arun(self, stop: asyncio.Event) -> None:
        """Every `interval_s` until `stop` is set: take or renew the lease, and poll if held. Then leave
        every swarm and release the lease."""
        try:
            async with TaskGroup() as group:
                self._group = group
                while not stop.is_set():
                    started = time.monotonic()
                    if await self._hold_lease():
                        try:
                            await self.apoll_once()
                        except Exception:  # e.g. the database is down: say so, and try again next time
                            logger.exception("The swarm monitor's poll failed")
                    try:
                        async with timeout(max(0.0, self.config.interval_s - (time.monotonic() - started))):
                            await stop.wait()
                    except TimeoutError:
                        pass
                self._cancel_hooks()
        finally:
            self._group = None
            await self.ashutdown()
            await self._release_lease()

    async def apoll_once(self) -> dict[str, str | None]:
        """Poll every active run once; maps each run's slug to None (stored) or the error. It does not
        ask for the lease: called alone, it is a one-off poll next to whichever monitor holds it."""
        specs = await asyncio.to_thread(self._load_specs)
        await self._sync_watchers(specs)
        results: dict[str, str | None] = {}
        async with TaskGroup() as group:
            for watcher in self.watchers.values():
                group.create_task(self._poll(watcher, results))
        return results

    def poll_once(self) -> dict[str, str | None]:
        """Blocking twin of `apoll_once` (from any thread but the peer event loop's)."""
        return run_coroutine(self.apoll_once())

    async def ashutdown(self) -> None:
        watchers, self.watchers = list(self.watchers.values()), {}
        for watcher in watchers:
            await watcher.ashutdown()

    def shutdown(self) -> None:
        run_coroutine(self.ashutdown())

    # ---- the lease -----------------------------------------------------------------------------

    async def _hold_lease(self) -> bool:
        """Take or renew the lease before a poll; True when this monitor may poll. One that lost the
        lease leaves every swarm; a database error skips the poll (and leaves too once the lease it last
        got has run out)."""
        try:
            held = await asyncio.to_thread(self.lease.try_acquire)
        except Exception:
            logger.exception("The swarm monitor cannot renew its lease; it skips this poll")
            if self.lease.clock() >= self.lease.held_until:
                await self._leave_swarms()
                self._holding = None
            return False
        if held and self._holding is not True:
            logger.info("This swarm monitor (%s) now polls this database", self.lease.holder)
        elif not held and self._holding is not False:  # said first, then done (the tests rely on it)
            logger.info("Another monitor (%s) polls this database; standing by", await self._holder())
            await self._leave_swarms()
        self._holding = held
        return held

    async def _holder(self) -> str:
        try:
            state = await asyncio.to_thread(self.lease.state)
        except Exception as e:  # only for the log
            return f"unknown: {type(e).__name__}"
        return state.holder if state is not None else "unknown"

    async def _leave_swarms(self) -> None:
        self._cancel_hooks()
        await self.ashutdown()

    def _cancel_hooks(self) -> None:
        for task in self._hook_tasks.values():
            task.cancel()

    async def _release_lease(self) -> None:
        if self.lease.held_until == 0.0:  # not held, or lost to another monitor
            return
        try:
            await asyncio.to_thread(self.lease.release)
        except Exception:
            logger.exception(
                "The swarm monitor cannot release its lease; another one takes over when it expires"
            )
        else:
            logger.info("The swarm monitor released its lease")

    # ---- one poll ------------------------------------------------------------------------------

    def _load_specs(self) -> dict[int, RunSpec]:
        specs: dict[int, RunSpec] = {}
        with self.session_factory() as session:
            runs = session.scalars(select(Run).where(Run.status == RunStatus.active.value)).all()
            for run in runs:
                if not run.initial_peers:
                    continue
                try:
                    specs[run.id] = self._spec(run)
                except ValueError as e:  # e.g. the site's secret key changed since the run was made
                    logger.error("Cannot monitor run %r: %s", run.slug, e)
        return specs

    def _spec(self, run: Run) -> RunSpec:
        is_open = run.auth_mode == AuthMode.open.value
        authority = None if is_open else run_authority(run, secret_key=self._secret_key)
        return RunSpec(
            run_id=run.id,
            slug=run.slug,
            initial_peers=tuple(run.initial_peers),
            target_batch_size=run.target_batch_size,
            open=is_open,
            local_updates=bool((run.averaging or {}).get("local_updates")),
            expert_uids=expert_grid(run.recipe_name, run.recipe_config),
            authority=authority,
            authority_public_key=run.authority_key.public_key if run.authority_key else b"",
            manifest=manifest(run, self.config.public_url),
        )

    async def _sync_watchers(self, specs: dict[int, RunSpec]) -> None:
        for run_id, watcher in list(self.watchers.items()):
            spec = specs.get(run_id)
            if spec is None or spec.fingerprint != watcher.spec.fingerprint:
                del self.watchers[run_id]
                await watcher.ashutdown()
                if spec is None:
                    logger.info("No longer monitoring run %r", watcher.spec.slug)
                    await asyncio.to_thread(self._store_unwatched, watcher.spec)
            else:
                watcher.spec = spec
        for run_id, spec in specs.items():
            if run_id not in self.watchers:
                self.watchers[run_id] = RunWatcher(
                    spec, identity_dir=self.config.identity_dir, token_lifetime_s=self.config.token_lifetime_s
                )

    async def _poll(self, watcher: RunWatcher, results: dict[str, str | None]) -> None:
        spec = watcher.spec
        try:
            async with timeout(self.config.poll_timeout_s):
                await watcher.astart()
                reading = await watcher.aread(self.clock)
            await asyncio.to_thread(self._store, spec, reading)
        except Exception as e:  # one run's failure is recorded and never stops the others
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            logger.warning("Polling run %r failed: %s", spec.slug, error)
            results[spec.slug] = error
            if not watcher.started:
                await watcher.ashutdown()
            await asyncio.to_thread(self._store_failure, spec, error)
            return
        results[spec.slug] = None
        self._run_hooks(watcher)

    def _store(self, spec: RunSpec, reading: SwarmReading) -> None:
        run = RunAccounting(
            run_id=spec.run_id,
            rules=ClaimRules(
                target_batch_size=spec.target_batch_size,
                tolerance=self.config.tolerance,
                max_samples_per_second=self.config.max_samples_per_second,
                epoch_rules=not spec.local_updates,
            ),
            credit_peers=spec.open,
        )
        with self.session_factory() as session:
            record_reading(session, run=run, reading=reading, options=self.config.store)
            session.commit()

    def _store_unwatched(self, spec: RunSpec) -> None:
        with self.session_factory() as session:
            record_unwatched(session, run_id=spec.run_id, now=self.clock())
            session.commit()

    def _store_failure(self, spec: RunSpec, error: str) -> None:
        try:
            with self.session_factory() as session:
                record_failure(
                    session, run_id=spec.run_id, error=error, now=self.clock(), options=self.config.store
                )
                session.commit()
        except Exception:  # the database itself may be what failed: log it, poll again next time
            logger.exception("Cannot record the failed poll of run %r", spec.slug)

    def _run_hooks(self, watcher: RunWatcher) -> None:
        if self._group is None or watcher.dht is None:
            return
        for index, hook in enumerate(self.hooks):
            key = (watcher.spec.run_id, index)
            running = self._hook_tasks.get(key)
            if running is None or running.done():
                self._hook_tasks[key] = self._group.create_task(
                    self._call_hook(hook, watcher.spec, watcher.dht)
                )

    async def _call_hook(self, hook: MonitorHook, spec: RunSpec, dht: DHT) -> None:
        try:
            await hook(spec, dht)
        except Exception:  # a hook's failure is logged and never stops the monitor
            logger.exception("A monitor hook failed on run %r", spec.slug)
