"""`Server`: hosts experts on a peer — serves their RPCs, batches their work, declares them, checkpoints.

    server = Server.create(expert_pattern="ffn.[0:4].[0:4]", expert_cls="ffn", hidden_dim=256,
                           dht=dht, config=ServerConfig(checkpoint_dir="ckpt"))
    ...
    server.shutdown()

The server registers `moe.info/1`, `moe.forward/1`, `moe.backward/1` and `moe.params/1`
(`peer.moe.protocol`) on its P2P peer (`dht.p2p` when it has a DHT). Each request is checked against
the expert's schema, queued in the expert's forward or backward `TaskPool`, batched by the `Runtime`
and answered. A caller in the same process (a peer that trains on the experts it hosts: a peer never
dials itself) uses `acall_local` instead, with the same checks and batching. `moe.params/1` sends an
expert's parameters, so a new replica of it can start from the same weights. With a DHT, the server
declares its experts every `update_period` seconds, valid for `expiration` seconds, so they vanish
from the DHT soon after the server dies. With a `checkpoint_dir`, it restores the experts on start
(and those added later with `aadd_experts`), saves them every `checkpoint_period` seconds and once
more on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from peer.compression import get_codec
from peer.compression.transfer import send_tensor
from peer.dht.dht import DHT
from peer.dht.node import get_dht_time
from peer.errors import RPCCode, RPCError
from peer.moe import protocol
from peer.moe.checkpoints import load_checkpoints, save_checkpoints
from peer.moe.dht_declaration import adeclare_experts
from peer.moe.errors import ExpertCallError, ExpertInputError, MoEError
from peer.moe.expert_backend import ExpertBackend
from peer.moe.expert_uid import ExpertUID, generate_uids_from_pattern
from peer.moe.experts import get_expert_class
from peer.moe.runtime import BatchingConfig, PoolStats, Runtime, TaskPool
from peer.moe.schema import TensorSchema
from peer.net.p2p import P2P
from peer.net.rpc import RPCStream
from peer.utils.aio import TaskGroup
from peer.utils.loop import run_coroutine

logger = logging.getLogger(__name__)

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def default_optimizer(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


@dataclass(frozen=True)
class ServerConfig:
    """How a server batches, where its experts run, how often it declares and checkpoints them."""

    batching: BatchingConfig = field(default_factory=BatchingConfig)
    device: str = "cpu"
    checkpoint_dir: str | os.PathLike[str] | None = None
    checkpoint_period: float = 300.0
    update_period: float = 30.0
    expiration: float | None = None  # defaults to 3 * update_period

    def __post_init__(self) -> None:
        if self.checkpoint_period <= 0 or self.update_period <= 0:
            raise ValueError("checkpoint_period and update_period must be positive")
        torch.device(self.device)  # raises on a malformed device string

    @property
    def declaration_ttl(self) -> float:
        return self.expiration if self.expiration is not None else 3 * self.update_period


class Server:
    """Serves `backends` (uid -> `ExpertBackend`) on `p2p`, or on `dht.p2p` and declared in `dht`."""

    def __init__(
        self,
        backends: Mapping[str, ExpertBackend],
        *,
        dht: DHT | None = None,
        p2p: P2P | None = None,
        config: ServerConfig | None = None,
        owns_network: bool = False,
    ):
        if (dht is None) == (p2p is None):
            raise ValueError("pass exactly one of dht (to declare experts) or p2p (to serve without a DHT)")
        if not backends:
            raise ValueError("backends must hold at least one expert")
        for uid in backends:
            ExpertUID.parse(uid)
        self.backends = dict(backends)
        self.dht = dht
        self.p2p: P2P = dht.p2p if dht is not None else p2p  # type: ignore[assignment]
        self.config = config or ServerConfig()
        self.owns_network = owns_network
        self.runtime = Runtime()
        self.forward_pools: dict[str, TaskPool] = {}
        self.backward_pools: dict[str, TaskPool] = {}
        for uid, backend in self.backends.items():
            self._add_pools(uid, backend)
        self._runner: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self.is_alive = False

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        expert_uids: Sequence[str] | None = None,
        *,
        expert_pattern: str | None = None,
        expert_cls: str = "ffn",
        hidden_dim: int = 1024,
        dht: DHT | None = None,
        p2p: P2P | None = None,
        config: ServerConfig | None = None,
        optimizer: OptimizerFactory = default_optimizer,
    ) -> Server:
        """Build experts of a registered class (uids listed or given by a pattern) and start serving."""
        config = config or ServerConfig()
        backends = make_backends(
            expert_uids,
            expert_pattern=expert_pattern,
            expert_cls=expert_cls,
            hidden_dim=hidden_dim,
            config=config,
            optimizer=optimizer,
        )
        server = cls(backends, dht=dht, p2p=p2p, config=config)
        server.start()
        return server

    def _add_pools(self, uid: str, backend: ExpertBackend) -> None:
        self.forward_pools[uid] = TaskPool(f"{uid}_forward", backend.forward, self.config.batching)
        self.backward_pools[uid] = TaskPool(f"{uid}_backward", backend.backward, self.config.batching)
        self.runtime.add_pool(self.forward_pools[uid])
        self.runtime.add_pool(self.backward_pools[uid])

    # ---- lifecycle ---------------------------------------------------------------------------

    async def astart(self) -> None:
        """Restore checkpoints, register the RPC handlers and start the runtime and periodic jobs."""
        if self._runner is not None:
            raise MoEError("this server is already started")
        loop = asyncio.get_running_loop()
        if self.config.checkpoint_dir is not None:
            await loop.run_in_executor(None, load_checkpoints, self.backends, self.config.checkpoint_dir)
        self.p2p.add_unary_handler(protocol.INFO_METHOD, self.rpc_info, protocol.InfoRequestMessage)
        self.p2p.add_handler(protocol.FORWARD_METHOD, self.rpc_forward)
        self.p2p.add_handler(protocol.BACKWARD_METHOD, self.rpc_backward)
        self.p2p.add_handler(protocol.PARAMS_METHOD, self.rpc_params)
        self._stopping = asyncio.Event()
        if self.dht is not None:
            await self._declare()  # clients can find the experts as soon as start returns
        self._runner = loop.create_task(self._run(), name=f"moe server {self.p2p.peer_id.short()}")
        self.is_alive = True
        logger.info("serving %d experts on %s", len(self.backends), self.p2p.peer_id)

    def start(self) -> None:
        run_coroutine(self.astart())

    async def _run(self) -> None:
        assert self._stopping is not None
        async with TaskGroup() as group:
            tasks = [group.create_task(self.runtime.run())]
            if self.dht is not None:
                tasks.append(group.create_task(self._every(self.config.update_period, self._declare)))
            if self.config.checkpoint_dir is not None:
                tasks.append(
                    group.create_task(self._every(self.config.checkpoint_period, self.asave_checkpoints))
                )
            await self._stopping.wait()
            for task in tasks:
                task.cancel()

    async def _every(self, period: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await job()
            except (OSError, MoEError, RPCError) as e:
                logger.warning("periodic job %s of the expert server failed: %s", job.__name__, e)

    async def ashutdown(self) -> None:
        """Stop serving, save a last checkpoint, and shut down the network if this server owns it."""
        if self._runner is None:
            return
        self.is_alive = False
        for method in protocol.METHODS:
            self.p2p.rpc.remove_handler(method)
        assert self._stopping is not None
        self._stopping.set()
        await self._runner
        self._runner = None
        if self.config.checkpoint_dir is not None:
            await self.asave_checkpoints()
        if self.owns_network:
            if self.dht is not None:
                await self.dht.ashutdown()
            else:
                await self.p2p.ashutdown()

    def shutdown(self) -> None:
        run_coroutine(self.ashutdown())

    async def asave_checkpoints(self) -> None:
        assert self.config.checkpoint_dir is not None
        loop = asyncio.get_running_loop()
        backends = dict(self.backends)  # experts may be added while the worker thread saves
        await loop.run_in_executor(None, save_checkpoints, backends, self.config.checkpoint_dir)

    async def aadd_experts(self, backends: Mapping[str, ExpertBackend]) -> list[str]:
        """Serve more experts (restored from checkpoints where there are any) and declare them at once;
        returns the uids added (those not served already)."""
        new = {uid: backend for uid, backend in backends.items() if uid not in self.backends}
        for uid in new:
            ExpertUID.parse(uid)
        if not new:
            return []
        if self.config.checkpoint_dir is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, load_checkpoints, new, self.config.checkpoint_dir)
        for uid, backend in new.items():
            self._add_pools(uid, backend)
        self.backends.update(new)
        if self.dht is not None and self.is_alive:
            await self._declare()
        logger.info("now serving %d experts (added %s)", len(self.backends), ", ".join(new))
        return list(new)

    def add_experts(self, backends: Mapping[str, ExpertBackend]) -> list[str]:
        return run_coroutine(self.aadd_experts(backends))

    async def _declare(self) -> None:
        assert self.dht is not None
        expiration = get_dht_time() + self.config.declaration_ttl
        stored = await adeclare_experts(self.dht, list(self.backends), expiration)
        failed = [uid for uid, ok in stored.items() if not ok]
        if failed:
            logger.warning("could not declare %d of %d experts in the DHT", len(failed), len(stored))

    @property
    def stats(self) -> dict[str, PoolStats]:
        return self.runtime.stats

    # ---- RPC handlers --------------------------------------------------------------------------

    def _backend(self, uid: str) -> ExpertBackend:
        backend = self.backends.get(uid)
        if backend is None:
            raise RPCError(RPCCode.NOT_FOUND, f"this server does not serve expert {uid!r}")
        return backend

    async def rpc_info(self, request: Any, rpc: RPCStream) -> Any:
        backend = self._backend(request.uid)
        return protocol.encode_info(expert_info(request.uid, backend))

    async def rpc_forward(self, rpc: RPCStream) -> None:
        await self._serve(rpc, backward=False)

    async def rpc_params(self, rpc: RPCStream) -> None:
        """Send an expert's parameters and buffers (its module's state, in `state_dict` order)."""
        request = await protocol.recv_request(rpc)
        backend = self._backend(request.uid)
        loop = asyncio.get_running_loop()
        state = await loop.run_in_executor(None, backend.module_state)
        codec = get_codec(request.response_codec)
        await protocol.send_response_header(rpc, len(state))
        for tensor in state.values():
            await send_tensor(rpc, tensor, codec)

    async def acall_local(
        self, uid: str, tensors: Sequence[torch.Tensor], *, backward: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Run a hosted expert's forward (or backward and optimizer step) for a caller in this process,
        with the checks and batching of an RPC but no network. Raises `peer.moe.errors` like a call."""
        backend = self.backends.get(uid)
        if backend is None or not self.is_alive:
            code = RPCCode.NOT_FOUND if backend is None else RPCCode.UNAVAILABLE
            raise ExpertCallError(uid, code, "this peer's expert server does not serve it now")
        backend.check_inputs(tensors, backward=backward)
        pool = (self.backward_pools if backward else self.forward_pools)[uid]
        return await pool.submit(*tensors)

    async def rpc_backward(self, rpc: RPCStream) -> None:
        await self._serve(rpc, backward=True)

    async def _serve(self, rpc: RPCStream, *, backward: bool) -> None:
        request = await protocol.recv_request(rpc)
        backend = self._backend(request.uid)
        schemas = backend.args_schema + backend.outputs_schema if backward else backend.args_schema
        what = f"{request.uid} {'backward' if backward else 'forward'}"
        if request.num_tensors != len(schemas):
            raise RPCError(
                RPCCode.INVALID_ARGUMENT, f"{what} takes {len(schemas)} tensors, got {request.num_tensors}"
            )
        max_rows = min(backend.max_batch_size, self.config.batching.max_batch_size)
        tensors = await protocol.recv_checked_tensors(rpc, schemas, max_batch_size=max_rows, what=what)
        pool = (self.backward_pools if backward else self.forward_pools)[request.uid]
        try:
            outputs = await pool.submit(*tensors)
        except ExpertInputError as e:
            raise RPCError(RPCCode.INVALID_ARGUMENT, str(e)) from None
        except MoEError as e:
            raise RPCError(RPCCode.UNAVAILABLE if not self.is_alive else RPCCode.INTERNAL, str(e)) from None
        codec = get_codec(request.response_codec)
        await protocol.send_response_header(rpc, len(outputs))
        for output in outputs:
            await send_tensor(rpc, output, codec)


def expert_info(uid: str, backend: ExpertBackend) -> protocol.ExpertInfo:
    return protocol.ExpertInfo(
        uid=uid,
        expert_cls=backend.expert_cls,
        args_schema=backend.args_schema,
        outputs_schema=backend.outputs_schema,
        max_batch_size=backend.max_batch_size,
    )


def make_backends(
    expert_uids: Sequence[str] | None = None,
    *,
    expert_pattern: str | None = None,
    expert_cls: str = "ffn",
    hidden_dim: int = 1024,
    config: ServerConfig | None = None,
    optimizer: OptimizerFactory = default_optimizer,
) -> dict[str, ExpertBackend]:
    """One freshly initialized `ExpertBackend` per uid, of the registered class `expert_cls`."""
    if (expert_uids is None) == (expert_pattern is None):
        raise ValueError("pass exactly one of expert_uids or expert_pattern")
    uids = list(expert_uids) if expert_uids is not None else generate_uids_from_pattern(expert_pattern or "")
    if len(set(uids)) != len(uids):
        raise ValueError("expert_uids must be unique")
    if hidden_dim < 1:
        raise ValueError(f"hidden_dim must be positive, got {hidden_dim}")
    config = config or ServerConfig()
    spec = get_expert_class(expert_cls)
    args_schema = [TensorSchema.from_tensor(t) for t in spec.sample_inputs(1, hidden_dim)]
    backends = {}
    for uid in uids:
        ExpertUID.parse(uid)
        module = spec.build(hidden_dim).to(config.device)
        params = [p for p in module.parameters() if p.requires_grad]
        backend = ExpertBackend(
            uid,
            module,
            optimizer(params) if params else None,
            args_schema=args_schema,
            max_batch_size=config.batching.max_batch_size,
            device=config.device,
        )
        backend.expert_cls = expert_cls
        backends[uid] = backend
    return backends


__all__ = ["Server", "ServerConfig", "default_optimizer", "expert_info", "make_backends"]
