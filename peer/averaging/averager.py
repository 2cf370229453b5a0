"""`DecentralizedAverager`: the public face of Moshpit averaging (DESIGN: public Python API).

    avg = DecentralizedAverager(tensors, dht, prefix="run_grads", target_group_size=4)
    gathered = avg.step(weight=1.0, gather={"samples": 32}, timeout=30)   # {peer_id: gather} or None
    with avg.get_tensors() as tensors: ...                                # the averaged tensors
    avg.load_state_from_peers(); avg.shutdown()

One `step()` = matchmaking through the DHT (`matchmaking`) + one butterfly all-reduce (`allreduce`)
with the group found, then a move on the Moshpit grid (`grid`). Every step advances `round_index`
(which picks the grid dimension), also one that found no group, so a peer that failed a round stays
in step with the others; `completed_rounds` counts the steps that averaged with a group.

Failures of other peers never raise out of `step()`: it returns None when no group formed or the
round failed, and otherwise the gathered metadata of the peers that took part (a dead reducer's part
keeps this peer's local values).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import torch

from peer.averaging import protocol
from peer.averaging.allreduce import AllReduceHooks, AllReduceResult, AllReduceService, AllReduceSettings
from peer.averaging.grid import MoshpitGrid
from peer.averaging.matchmaking import Matchmaking, MatchmakingSettings
from peer.averaging.partition import FlatBuffer, GroupMember, check_tensors, schema_hash
from peer.averaging.state_sharing import StateHook, StateServer, download_state, state_key
from peer.compression.base import CompressionBase, NoCompression
from peer.dht import get_dht_time
from peer.errors import AveragingError, PeerError
from peer.utils.loop import run_coroutine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AveragingConfig:
    """The rarely changed options of a `DecentralizedAverager` (durations in seconds).

    - `grid_size` / `grid_coords`: the Moshpit grid and this peer's starting cell (random if None).
    - `chunk_size`: elements per streamed chunk; `sender_timeout`: a sender silent this long is excluded
      (None: `request_timeout`); `allreduce_timeout`: the all-reduce phase's limit.
    - `default_step_timeout`: `step(timeout=None)` gives up after this long.
    - `state_priority`: how advanced this peer's state is (newcomers download from the highest);
      `declare_state_period`: how often a donor re-declares itself; `state_timeout`: per donor.
    - `hooks`, `state_hook`: fault injection points for tests.
    """

    grid_size: tuple[int, ...] = (1,)
    grid_coords: tuple[int, ...] | None = None
    chunk_size: int = 1 << 20
    sender_timeout: float | None = None
    allreduce_timeout: float = 60.0
    default_step_timeout: float = 120.0
    declare_state_period: float = 30.0
    state_timeout: float = 60.0
    hooks: AllReduceHooks = field(default_factory=AllReduceHooks)
    state_hook: StateHook | None = None


class DecentralizedAverager:
    """Averages `tensors` in place with peers found under `prefix` in the DHT (see the module docstring)."""

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        dht: Any,
        *,
        prefix: str,
        target_group_size: int = 4,
        min_group_size: int = 2,
        min_matchmaking_time: float = 5.0,
        request_timeout: float = 3.0,
        client_mode: bool = False,
        compression: CompressionBase | None = None,
        bandwidth: float | None = None,
        start: bool = True,
        config: AveragingConfig | None = None,
    ):
        self.prefix = protocol.check_prefix(prefix)
        self.config = config or AveragingConfig()
        check_tensors(tensors)
        self._tensors: list[torch.Tensor] = [t.detach() for t in tensors]  # same memory: averaged in place
        self._buffer = FlatBuffer(self._tensors)
        if bandwidth is not None and not bandwidth > 0:
            raise ValueError(f"bandwidth: expected a positive number, got {bandwidth!r}")
        self.dht, self.client_mode, self.bandwidth = dht, client_mode, float(bandwidth or 1.0)
        self.compression = compression or NoCompression()
        self.matchmaking_settings = MatchmakingSettings(
            target_group_size, min_group_size, min_matchmaking_time, request_timeout
        )
        self.request_timeout = request_timeout
        self.grid = MoshpitGrid(self.config.grid_size)
        coords = self.config.grid_coords
        self.grid_coords = self.grid.check_coords(coords) if coords is not None else self.grid.random_coords()
        self.round_index = 0  # rounds attempted: picks the grid dimension (see `grid`)
        self.completed_rounds = 0  # rounds that averaged with a group
        self.state_priority = 0.0
        self.state_metadata: Any = None
        self.schema = schema_hash(self._tensors, self.compression, self.config.chunk_size)
        self.last_result: AllReduceResult | None = None
        self.last_timings: dict[str, float] = {}  # seconds spent in the last step's phases
        self._lock = threading.Lock()
        self._step_lock: asyncio.Lock | None = None
        self._parts: tuple[Matchmaking, AllReduceService, StateServer | None] | None = None
        self._declarer: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        if start:
            self.run_in_background()

    # ---- lifecycle -------------------------------------------------------------------------------

    async def astart(self) -> None:
        if self._parts is not None:
            return
        p2p = self.dht.p2p
        settings = AllReduceSettings(
            self.config.chunk_size, self.config.sender_timeout or self.request_timeout, self.config.hooks
        )
        service = AllReduceService(
            p2p,
            self.prefix,
            compression=self.compression,
            settings=settings,
            request_timeout=self.request_timeout,
        )
        matchmaking = Matchmaking(
            self.dht, self.prefix, self.matchmaking_settings, client_mode=self.client_mode
        )
        server = None
        if not self.client_mode:
            server = StateServer(
                p2p, self.prefix, self.schema, self._snapshot, self.compression, self.config.state_hook
            )
        self._parts = (matchmaking, service, server)
        self._step_lock, self._stop = asyncio.Lock(), asyncio.Event()
        if server is not None:
            self._declarer = asyncio.get_running_loop().create_task(self._declare_state_forever())

    def run_in_background(self) -> None:
        """Start serving (the blocking twin of `astart`; the name follows hivemind)."""
        run_coroutine(self.astart())

    async def ashutdown(self) -> None:
        if self._parts is None:
            return
        assert self._stop is not None
        self._stop.set()
        if self._declarer is not None:
            await self._declarer
        for part in self._parts:
            if part is not None:
                part.close()
        self._parts = None

    def shutdown(self) -> None:
        run_coroutine(self.ashutdown())

    def __enter__(self) -> DecentralizedAverager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ---- tensors ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def get_tensors(self) -> Iterator[list[torch.Tensor]]:
        """The averaged tensors, to read or modify in place; a step never writes while you hold them."""
        with self._lock:
            yield self._tensors

    def _load_flat(self) -> torch.Tensor:
        with self._lock:
            return self._buffer.load(self._tensors)

    def _store_flat(self) -> None:
        with self._lock:
            self._buffer.store(self._tensors)

    # ---- averaging -------------------------------------------------------------------------------

    def step(
        self, weight: float = 1.0, gather: Any = None, timeout: float | None = None
    ) -> dict[str, Any] | None:
        """Average once with a group (see the module docstring); blocking twin of `astep`."""
        return run_coroutine(self.astep(weight=weight, gather=gather, timeout=timeout))

    async def astep(self, weight: float = 1.0, gather: Any = None, timeout: float | None = None):
        if not weight > 0:
            raise ValueError(f"weight: expected a positive number, got {weight!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout: expected a positive number or None, got {timeout!r}")
        if self._parts is None or self._step_lock is None:
            raise AveragingError("the averager is not running (start it, or it was shut down)")
        try:
            packed = msgpack.packb(gather)
        except (TypeError, ValueError) as e:
            raise TypeError(f"gather: must be msgpack-serializable: {e}") from None
        async with self._step_lock:
            try:
                return await self._step(weight, packed, timeout or self.config.default_step_timeout)
            except PeerError as e:  # a failed round is a None, never an exception from deep inside
                logger.warning("averaging step of %s failed: %s", self.prefix, e)
                return None

    async def _step(self, weight: float, gather: bytes, timeout: float) -> dict[str, Any] | None:
        assert self._parts is not None
        matchmaking, service, _ = self._parts
        loop = asyncio.get_running_loop()
        step_deadline = loop.time() + timeout
        p2p = self.dht.p2p
        me = GroupMember(
            peer_id=str(p2p.peer_id),
            maddrs=() if self.client_mode else tuple(str(m) for m in p2p.get_visible_maddrs()),
            bandwidth=self.bandwidth,
            client_mode=self.client_mode,
            gather=gather,
        )
        key = self.grid.group_key(
            f"{self.prefix}.{self.schema.hex()[:16]}", self.grid_coords, self.round_index
        )
        started = loop.time()
        round_index, self.round_index = self.round_index, self.round_index + 1  # failed rounds count too
        group = await matchmaking.look_for_group(key, self.schema, me, get_dht_time() + timeout)
        self.last_timings = {"matchmaking": loop.time() - started}
        if group is None:
            logger.info("%s: no group formed under %s", self.prefix, key)
            return None
        flat = await loop.run_in_executor(None, self._load_flat)
        deadline = min(step_deadline, loop.time() + self.config.allreduce_timeout)
        result = self.last_result = await service.run(group, flat, weight=weight, deadline=deadline)
        await loop.run_in_executor(None, self._store_flat)
        self.last_timings["allreduce"] = loop.time() - started - self.last_timings["matchmaking"]
        self.grid_coords = self.grid.next_coords(self.grid_coords, round_index, group.index_of(me.peer_id))
        self.completed_rounds += 1
        self.state_priority = max(self.state_priority, float(self.completed_rounds))
        participants = set(result.participants)
        if participants == {me.peer_id} and len(group.members) > 1:
            return None
        return {m.peer_id: msgpack.unpackb(m.gather) for m in group.members if m.peer_id in participants}

    # ---- state sharing ---------------------------------------------------------------------------

    async def _snapshot(self) -> tuple[bytes, list[torch.Tensor]]:
        def copy() -> tuple[bytes, list[torch.Tensor]]:
            with self._lock:
                return msgpack.packb(self.state_metadata), [t.clone() for t in self._tensors]

        return await asyncio.get_running_loop().run_in_executor(None, copy)

    async def _declare_state_forever(self) -> None:
        assert self._stop is not None
        me = self.dht.p2p
        while not self._stop.is_set():
            expiration = get_dht_time() + 2 * self.config.declare_state_period
            maddrs = [str(m) for m in me.get_visible_maddrs()]
            try:
                await self.dht.astore(
                    state_key(self.prefix), [self.state_priority, maddrs], expiration, subkey=str(me.peer_id)
                )
            except PeerError as e:
                logger.warning("%s: declaring the state failed: %s", self.prefix, e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.config.declare_state_period)

    def load_state_from_peers(self, timeout: float | None = None) -> tuple[Any, list[torch.Tensor]] | None:
        """Download the most advanced peer's state into our tensors; (metadata, tensors) or None."""
        return run_coroutine(self.aload_state_from_peers(timeout))

    async def aload_state_from_peers(self, timeout: float | None = None):
        found = await self.dht.aget(state_key(self.prefix), latest=True)
        donors = []
        if found is not None and isinstance(found.value, dict):
            me = str(self.dht.p2p.peer_id)
            for subkey, item in found.value.items():
                with contextlib.suppress(TypeError, ValueError, IndexError):
                    if str(subkey) != me:
                        donors.append((-float(item.value[0]), str(subkey), [str(m) for m in item.value[1]]))
        donors.sort()
        loaded = await download_state(
            self.dht.p2p,
            self.prefix,
            self.schema,
            [(d[1], d[2]) for d in donors],
            self._tensors,
            timeout or self.config.state_timeout,
        )
        if loaded is None:
            return None
        metadata, tensors, donor = loaded

        def install() -> None:
            with self._lock, torch.no_grad():
                for mine, theirs in zip(self._tensors, tensors, strict=True):
                    mine.copy_(theirs)
                self.state_metadata = msgpack.unpackb(metadata)

        await asyncio.get_running_loop().run_in_executor(None, install)
        logger.info("%s: loaded the state of %s", self.prefix, donor[:12])
        return self.state_metadata, tensors


__all__ = ["AveragingConfig", "DecentralizedAverager"]
