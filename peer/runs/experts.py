"""Hosting a share of a Mixture-of-Experts run's expert grid: what `hivemind-peer join` serves.

    replicas = get_expert_replicas(dht, grid)                 who serves each expert (DHT declarations)
    choose_experts(grid, counts, count, peer_id)              missing first, then least replicated
    host = ExpertHost(dht, recipe, run, HostingOptions())     builds, serves and declares the share
    host.start(); ...; host.shutdown()

**Choice** (`choose_experts`, pure): the experts nobody serves come first, then the least replicated
ones; among equals, the experts this peer has checkpoints of, then an order seeded by this peer's
PeerID, so peers that start together (and see the same declarations) spread over the grid instead of
all taking the same experts. The default share is an equal one: the grid divided by the number of
hosting peers, this one included (`default_share`), so the first peer of a run hosts the whole grid.
This peer's own declarations are ignored when it chooses (they are left over from a previous run of
the same identity).

**Initial state**: a new expert starts from its local checkpoint when there is one, otherwise from a
live replica's parameters (`moe.params/1`), otherwise from a seed derived from the run and the uid
(`expert_seed`), so every fresh replica of an expert starts equal.

**Rebalancing**: every `rebalance_period` seconds the host looks for experts that nobody serves any
more (their hosts left) and takes its share of them, so the swarm as a whole keeps hosting the model.

**Replica averaging**: replicas of one expert are trained by whatever calls reach each of them, so
they drift apart. Every `average_period` seconds the host pulls each of its experts that has another
live replica halfway toward one of them, chosen at random (`moe.params/1`, the call new replicas
start from): p <- (p + q) / 2 on the expert's current values, under its lock (never mid-step).
Replicas that all do this converge to one another (pairwise gossip averaging). A replica whose
parameters are not all finite is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from peer.dht import DHT
from peer.errors import PeerError
from peer.moe import BatchingConfig, ExpertBackend, ExpertEntry, MoEError, Server, ServerConfig
from peer.moe.checkpoints import checkpoint_path
from peer.moe.client.calls import acall_params
from peer.moe.dht_declaration import aget_expert_replicas
from peer.moe.server import make_backends
from peer.net.identity import PeerID
from peer.runs.recipes import ExpertSpec, Recipe
from peer.utils.aio import TaskGroup
from peer.utils.loop import run_coroutine

logger = logging.getLogger(__name__)


def expert_seed(run: str, uid: str) -> int:
    """The seed expert `uid` of run `run` is initialized from, on every peer that hosts it."""
    digest = hashlib.sha256(f"hivemind-platform/run/{run}/expert/{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def default_share(grid_size: int, hosts: int) -> int:
    """An equal share of a grid of `grid_size` experts among `hosts` hosting peers (at least 1)."""
    if grid_size < 1:
        raise ValueError(f"grid_size must be positive, got {grid_size}")
    if hosts < 1:
        raise ValueError(f"hosts must be positive, got {hosts}")
    return max(1, math.ceil(grid_size / hosts))


def choose_experts(
    grid: Sequence[str],
    replicas: Mapping[str, int],
    count: int,
    peer_id: PeerID,
    prefer: Collection[str] = (),
) -> list[str]:
    """The `count` experts of `grid` this peer should host, in grid order (see the module docstring).

    `replicas[uid]` is how many other peers serve `uid` (missing: none); `prefer` holds the experts
    this peer has checkpoints of.
    """
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    if len(set(grid)) != len(grid):
        raise ValueError("grid must not repeat an expert")
    salt = peer_id.to_bytes()

    def rank(uid: str) -> tuple[int, bool, bytes]:
        tie = hashlib.sha256(salt + uid.encode()).digest()
        return replicas.get(uid, 0), uid not in prefer, tie

    chosen = set(sorted(grid, key=rank)[:count])
    return [uid for uid in grid if uid in chosen]


@dataclass(frozen=True)
class HostingOptions:
    """How a peer hosts its share of the grid."""

    num_experts: int | None = None  # None: default_share
    device: str = "cpu"
    checkpoint_dir: Path | None = None  # restore experts from, and save them to, <dir>/<uid>/
    update_period: float = 30.0  # seconds between declarations (they expire after 3 periods)
    rebalance_period: float | None = 60.0  # seconds between looks for orphaned experts; None: never
    average_period: float | None = 60.0  # seconds between pulls toward another replica; None: never
    params_timeout: float = 30.0  # for downloading a replica's parameters
    max_batch_size: int = 16384  # rows of one request (a batch's tokens routed to one expert)

    def __post_init__(self) -> None:
        if self.num_experts is not None and self.num_experts < 1:
            raise ValueError(f"num_experts must be at least 1, got {self.num_experts}")
        if self.rebalance_period is not None and self.rebalance_period <= 0:
            raise ValueError("rebalance_period must be positive (or None)")
        if self.average_period is not None and self.average_period <= 0:
            raise ValueError("average_period must be positive (or None)")


class ExpertHost:
    """This peer's share of a run's experts, served on the run's DHT (see the module docstring)."""

    def __init__(self, dht: DHT, recipe: Recipe, run: str, options: HostingOptions | None = None):
        spec = recipe.expert_spec()
        grid = recipe.expert_uids()
        if spec is None or not grid:
            raise ValueError(f"recipe {recipe.name!r} has no experts to host")
        self.dht, self.run, self.spec, self.grid = dht, run, spec, grid
        self.options = options or HostingOptions()
        self.server_config = ServerConfig(
            batching=BatchingConfig(max_batch_size=self.options.max_batch_size),
            device=self.options.device,
            checkpoint_dir=self.options.checkpoint_dir,
            update_period=self.options.update_period,
        )
        self.server: Server | None = None
        self._background: list[asyncio.Task[None]] = []  # rebalancing and replica averaging

    @property
    def uids(self) -> list[str]:
        """The experts hosted now, in grid order."""
        hosted = self.server.backends if self.server is not None else {}
        return [uid for uid in self.grid if uid in hosted]

    def samples_served(self) -> int:
        """Rows this peer's experts have run forward, for anyone (itself included)."""
        if self.server is None:
            return 0
        return sum(s.examples for name, s in self.server.stats.items() if name.endswith("_forward"))

    def start(self) -> list[str]:
        """Choose the share, build it, start serving and declaring it; returns the uids hosted."""
        return run_coroutine(self.astart())

    async def astart(self) -> list[str]:
        if self.server is not None:
            raise MoEError("this expert host is already started")
        replicas = await aget_expert_replicas(self.dht, self.grid)
        me = self.dht.peer_id.to_base58()
        others = {uid: [e for e in entries if e.peer_id != me] for uid, entries in replicas.items()}
        hosts = {entry.peer_id for entries in others.values() for entry in entries}
        count = self.options.num_experts or default_share(len(self.grid), len(hosts) + 1)
        chosen = choose_experts(
            self.grid,
            {uid: len(entries) for uid, entries in others.items()},
            min(count, len(self.grid)),
            self.dht.peer_id,
            prefer=self._checkpointed(self.grid),
        )
        backends = await self._abuild(chosen, others)
        self.server = Server(backends, dht=self.dht, config=self.server_config)
        await self.server.astart()
        logger.info("%s: hosting %d of the %d experts of the grid", self.run, len(chosen), len(self.grid))
        loop = asyncio.get_running_loop()
        if self.options.rebalance_period is not None:
            self._background.append(loop.create_task(self._rebalance_forever(self.options.rebalance_period)))
        if self.options.average_period is not None:
            self._background.append(loop.create_task(self._average_forever(self.options.average_period)))
        return chosen

    def shutdown(self) -> None:
        run_coroutine(self.ashutdown())

    async def ashutdown(self) -> None:
        """Stop rebalancing, averaging and serving; the server saves a last checkpoint (with a
        checkpoint dir)."""
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background = []
        if self.server is not None:
            await self.server.ashutdown()

    # ---- building experts -------------------------------------------------------------------

    def _checkpointed(self, uids: Sequence[str]) -> set[str]:
        folder = self.options.checkpoint_dir
        return {uid for uid in uids if folder is not None and checkpoint_path(folder, uid).exists()}

    async def _abuild(
        self, uids: Sequence[str], replicas: Mapping[str, Sequence[ExpertEntry]]
    ) -> dict[str, ExpertBackend]:
        """Seeded experts; those with a live replica elsewhere (and no checkpoint here) copy its
        parameters. Checkpoints are restored by the server when it starts serving them."""
        loop = asyncio.get_running_loop()
        backends = await loop.run_in_executor(
            None, build_expert_backends, self.spec, self.run, uids, self.server_config
        )
        checkpointed = self._checkpointed(uids)
        async with TaskGroup() as group:
            for uid, backend in backends.items():
                if uid not in checkpointed and replicas.get(uid):
                    group.create_task(self._copy_from_replica(backend, replicas[uid]))
        return backends

    async def _copy_from_replica(self, backend: ExpertBackend, replicas: Sequence[ExpertEntry]) -> None:
        for entry in replicas:
            state = await self._replica_state(backend, entry)
            if state is not None:
                backend.load_module_state(state)
                logger.info("copied expert %s from its replica on %s", entry.uid, entry.peer_id)
                return
        logger.warning("no replica of expert %s answered; it starts from the run's seed", backend.name)

    async def _replica_state(
        self, backend: ExpertBackend, entry: ExpertEntry
    ) -> dict[str, torch.Tensor] | None:
        """The module state of `backend`'s expert on the replica `entry`; None (logged) when that
        replica does not answer or sends parameters that are not all finite."""
        loop = asyncio.get_running_loop()  # the expert's lock may wait for a batch: not on the event loop
        templates = await loop.run_in_executor(None, backend.module_state)
        p2p = self.dht.p2p
        if p2p is None:
            raise MoEError("the DHT is not running")
        peer_id = PeerID.from_base58(entry.peer_id)
        if entry.maddrs:
            p2p.add_addresses(peer_id, entry.maddrs)
        try:
            tensors = await acall_params(
                p2p, peer_id, entry.uid, list(templates.values()), timeout=self.options.params_timeout
            )
        except MoEError as e:
            logger.info("could not read expert %s from %s: %s", entry.uid, entry.peer_id, e)
            return None
        if not await loop.run_in_executor(None, _all_finite, tensors):
            logger.warning("the replica of expert %s on %s sent non-finite values", entry.uid, entry.peer_id)
            return None
        return dict(zip(templates, tensors, strict=True))

    # ---- replica averaging ------------------------------------------------------------------

    async def _average_forever(self, period: float) -> None:
        while True:
            await asyncio.sleep(period * random.uniform(0.8, 1.2))  # replicas do not pull in lockstep
            try:
                await self.aaverage_replicas()
            except (PeerError, OSError, ValueError) as e:
                logger.warning("%s: averaging expert replicas failed: %s", self.run, e)

    async def aaverage_replicas(self) -> list[str]:
        """Pull each hosted expert halfway toward another live replica of it, chosen at random (see
        the module docstring); returns the uids averaged."""
        assert self.server is not None
        uids = self.uids
        replicas = await aget_expert_replicas(self.dht, uids)
        me = self.dht.peer_id.to_base58()
        loop = asyncio.get_running_loop()
        averaged = []
        for uid in uids:
            others = [entry for entry in replicas.get(uid, ()) if entry.peer_id != me]
            backend = self.server.backends.get(uid)
            if not others or backend is None:
                continue
            state = await self._replica_state(backend, random.choice(others))
            if state is not None:
                await loop.run_in_executor(None, backend.mix_module_state, state, 0.5)
                averaged.append(uid)
        if averaged:
            logger.info("%s: averaged %d experts with a replica", self.run, len(averaged))
        return averaged

    # ---- rebalancing ------------------------------------------------------------------------

    async def _rebalance_forever(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await self.afill_missing()
            except (PeerError, OSError, ValueError) as e:  # DHT and expert errors alike: try again later
                logger.warning("%s: looking for orphaned experts failed: %s", self.run, e)

    async def afill_missing(self) -> list[str]:
        """Take this peer's share of the experts nobody serves now; returns the uids added."""
        assert self.server is not None
        replicas = await aget_expert_replicas(self.dht, self.grid)
        missing = [uid for uid in self.grid if not replicas[uid] and uid not in self.server.backends]
        if not missing:
            return []
        hosts = {entry.peer_id for entries in replicas.values() for entry in entries}
        hosts.add(self.dht.peer_id.to_base58())
        count = default_share(len(missing), len(hosts))
        chosen = choose_experts(missing, {}, count, self.dht.peer_id, prefer=self._checkpointed(missing))
        logger.info("%s: %d experts have no host; taking %d of them", self.run, len(missing), len(chosen))
        backends = await self._abuild(chosen, {})
        return await self.server.aadd_experts(backends)


def _all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def build_expert_backends(
    spec: ExpertSpec, run: str, uids: Sequence[str], config: ServerConfig
) -> dict[str, ExpertBackend]:
    """Freshly initialized experts, each from its `expert_seed` (the global RNG is left untouched)."""
    backends: dict[str, ExpertBackend] = {}
    for uid in uids:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(expert_seed(run, uid))
            backends.update(
                make_backends(
                    [uid],
                    expert_cls=spec.expert_cls,
                    hidden_dim=spec.hidden_dim,
                    config=config,
                    optimizer=lambda params: torch.optim.Adam(params, lr=spec.lr),
                )
            )
    return backends


__all__ = [
    "ExpertHost",
    "HostingOptions",
    "build_expert_backends",
    "choose_experts",
    "default_share",
    "expert_seed",
]
