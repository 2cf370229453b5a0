"""`RemoteMixtureOfExperts` and `RemoteSwitchMixtureOfExperts`: layers whose experts live on other peers.

A linear gating network scores each coordinate of each grid dimension. For every sample, an exact
best-first search over the DHT declarations (`peer.moe.dht_declaration.afind_best_experts`) finds the
`k_best` live experts with the highest summed scores. The samples routed to one expert go to it in
one request, all experts are called at once, and the layer waits:

- until every sample has `k_min` answers, then at most `timeout_after_k_min` more seconds for the
  rest (None: wait for every call), and never past `forward_timeout` per call;
- in backward, likewise with `backward_k_min` and `backward_timeout`, calling only the experts that
  answered the forward pass.

A mixture built with `dht=None` holds only its gate (no network is touched) until `attach(dht)`
connects it; experts served by this very peer (`attach(dht, local_server=...)`) are called in-process,
since a peer never dials itself. Experts that fail, time out or died are masked out. A sample with
fewer than `k_min` answers raises `NotEnoughExpertsError` (unless `allow_zero_outputs`, which gives
it a zero output). The output is the softmax-weighted (over the answering experts' gating scores) sum
of their outputs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from peer.compression import CompressionBase, NoCompression
from peer.dht.dht import DHT
from peer.moe.beam_search import ExpertEntry
from peer.moe.client.calls import acall_backward, acall_forward, run_blocking
from peer.moe.dht_declaration import afind_best_experts
from peer.moe.errors import MoEError, NotEnoughExpertsError
from peer.moe.expert_uid import ExpertUID
from peer.net.identity import PeerID
from peer.net.p2p import P2P

if TYPE_CHECKING:
    from peer.moe.server import Server

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MoEConfig:
    """Timeouts (seconds; None waits without limit) and fault tolerance of a remote mixture."""

    forward_timeout: float | None = None
    timeout_after_k_min: float | None = None
    backward_k_min: int = 1
    backward_timeout: float | None = None
    allow_zero_outputs: bool = False
    beam_size: int = 0  # prefixes expanded per search round; 0 means k_best
    compression: CompressionBase = field(default_factory=NoCompression)


@dataclass(frozen=True)
class _Job:
    """One expert's share of a batch: which rows go to it, and in which output slot they land."""

    entry: ExpertEntry
    rows: torch.Tensor  # long [n]
    slots: torch.Tensor  # long [n]


class RemoteMixtureOfExperts(nn.Module):
    """A mixture of the `k_best` best live experts per sample; `forward(x) -> (output, mask)`.

    `x` is `[batch, in_features]`; `output` has the experts' output shape; `mask[b, j]` says whether
    sample b's j-th chosen expert answered (False too where fewer than `k_best` experts exist).
    """

    def __init__(
        self,
        *,
        in_features: int,
        grid_size: Sequence[int],
        dht: DHT | None,
        uid_prefix: str,
        k_best: int,
        k_min: int = 1,
        config: MoEConfig | None = None,
    ):
        super().__init__()
        if in_features < 1 or not grid_size or any(g < 1 for g in grid_size):
            raise ValueError("in_features and every grid_size entry must be positive")
        if not 0 <= k_min <= k_best:
            raise ValueError(f"k_min must be in 0..k_best, got k_min={k_min}, k_best={k_best}")
        self.in_features, self.grid_size = in_features, tuple(grid_size)
        self.dht, self.uid_prefix = dht, uid_prefix.rstrip(".")
        self.local_server: Server | None = None
        self.k_best, self.k_min = k_best, k_min
        self.config = config or MoEConfig()
        self.proj = nn.Linear(in_features, sum(self.grid_size))
        self._dummy = torch.empty(0, requires_grad=True)

    def attach(self, dht: DHT, local_server: Server | None = None) -> None:
        """Find experts through `dht` from now on; call those of `local_server` (this peer's own expert
        server) in-process."""
        self.dht, self.local_server = dht, local_server

    def compute_grid_scores(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.proj(x).split(self.grid_size, dim=-1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must be [batch, {self.in_features}], got {tuple(x.shape)}")
        grid_scores = self.compute_grid_scores(x)
        chosen = self.find_experts(grid_scores)
        outputs, mask = self.call_experts(x, chosen)
        logits = _expert_logits(grid_scores, chosen, self.k_best, x.device)
        logits = logits.masked_fill(~mask, float("-inf"))
        weights = torch.nan_to_num(torch.softmax(logits, dim=1), nan=0.0)
        weights = weights.view(*weights.shape, *([1] * (outputs.dim() - 2)))
        return (weights * outputs).sum(dim=1), mask

    def find_experts(self, grid_scores: Sequence[torch.Tensor]) -> list[list[ExpertEntry]]:
        """The chosen experts per sample, best first (an exact search over the DHT declarations)."""
        per_sample = [dim.detach().float().cpu().tolist() for dim in grid_scores]
        batch_scores = [[dims[b] for dims in per_sample] for b in range(len(per_sample[0]))]
        if self.dht is None:
            raise MoEError(f"the mixture {self.uid_prefix!r} has no DHT to find experts: call attach(dht)")
        found = run_blocking(
            afind_best_experts(self.dht, self.uid_prefix, batch_scores, self.k_best, self.config.beam_size)
        )
        return [[entry for entry, _ in sample] for sample in found]

    def call_experts(
        self, x: torch.Tensor, chosen: list[list[ExpertEntry]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs `[batch, k_best, *out]` of the chosen experts (zeros where none) and who answered."""
        jobs = _plan_jobs(chosen)
        outputs, mask = _RemoteCallMany.apply(self._dummy, x, self, jobs)
        return outputs, mask

    # ---- used by _RemoteCallMany -------------------------------------------------------------

    @property
    def _p2p(self) -> P2P:
        if self.dht is None or self.dht.p2p is None:
            raise MoEError("the mixture's DHT is not running")
        return self.dht.p2p

    def _local(self, entry: ExpertEntry) -> Server | None:
        """This peer's own server, when it is the one that serves `entry`."""
        server = self.local_server
        if server is not None and entry.peer_id == server.p2p.peer_id.to_base58():
            return server
        return None

    def _connect(self, entry: ExpertEntry) -> PeerID:
        peer_id = PeerID.from_base58(entry.peer_id)
        if entry.maddrs:
            self._p2p.add_addresses(peer_id, entry.maddrs)
        return peer_id

    def _forward_call(
        self, job: _Job, x: torch.Tensor
    ) -> Callable[[], Coroutine[Any, Any, tuple[torch.Tensor, ...]]]:
        def call() -> Coroutine[Any, Any, tuple[torch.Tensor, ...]]:
            local = self._local(job.entry)
            if local is not None:
                call = local.acall_local(job.entry.uid, (x[job.rows],))
                return asyncio.wait_for(call, self.config.forward_timeout)
            return acall_forward(
                self._p2p,
                self._connect(job.entry),
                job.entry.uid,
                (x[job.rows],),
                timeout=self.config.forward_timeout,
                compression=self.config.compression,
            )

        return call

    def _backward_call(
        self, job: _Job, x: torch.Tensor, grad: torch.Tensor
    ) -> Callable[[], Coroutine[Any, Any, tuple[torch.Tensor, ...]]]:
        def call() -> Coroutine[Any, Any, tuple[torch.Tensor, ...]]:
            inputs_and_grads = (x[job.rows], grad[job.rows, job.slots].contiguous())
            local = self._local(job.entry)
            if local is not None:
                call = local.acall_local(job.entry.uid, inputs_and_grads, backward=True)
                return asyncio.wait_for(call, self.config.backward_timeout)
            return acall_backward(
                self._p2p,
                self._connect(job.entry),
                job.entry.uid,
                inputs_and_grads,
                timeout=self.config.backward_timeout,
                compression=self.config.compression,
            )

        return call


def _plan_jobs(chosen: list[list[ExpertEntry]]) -> list[_Job]:
    grouped: dict[ExpertEntry, tuple[list[int], list[int]]] = {}
    for row, entries in enumerate(chosen):
        for slot, entry in enumerate(entries):
            rows, slots = grouped.setdefault(entry, ([], []))
            rows.append(row)
            slots.append(slot)
    return [
        _Job(e, torch.tensor(r, dtype=torch.long), torch.tensor(s, dtype=torch.long))
        for e, (r, s) in grouped.items()
    ]


def _expert_logits(
    grid_scores: Sequence[torch.Tensor], chosen: list[list[ExpertEntry]], k_best: int, device: torch.device
) -> torch.Tensor:
    batch = len(chosen)
    coords = torch.zeros(batch, k_best, len(grid_scores), dtype=torch.long)
    for row, entries in enumerate(chosen):
        for slot, entry in enumerate(entries):
            coords[row, slot] = torch.tensor(ExpertUID.parse(entry.uid).coords)
    coords = coords.to(device)
    logits = torch.zeros(batch, k_best, device=device, dtype=grid_scores[0].dtype)
    for dim, scores in enumerate(grid_scores):
        logits = logits + scores.gather(1, coords[:, :, dim])
    return logits


async def _gather_with_k_min(
    calls: Sequence[Callable[[], Coroutine[Any, Any, tuple[torch.Tensor, ...]]]],
    rows: Sequence[torch.Tensor],
    batch_size: int,
    k_min: int,
    timeout_after_k_min: float | None,
) -> list[tuple[torch.Tensor, ...] | None]:
    """Run every call; once every sample has k_min answers (or all its calls ended), wait at most
    `timeout_after_k_min` more seconds, then cancel the rest. Failed or cancelled calls give None."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[tuple[torch.Tensor, ...]]] = [loop.create_task(call()) for call in calls]
    index = {task: i for i, task in enumerate(tasks)}
    results: list[tuple[torch.Tensor, ...] | None] = [None] * len(tasks)
    needed = torch.zeros(batch_size, dtype=torch.long)
    for r in rows:
        needed[r] += 1
    needed = needed.clamp(max=k_min)
    answered = torch.zeros(batch_size, dtype=torch.long)
    outstanding = needed.clone()  # calls still running per sample, capped at what is needed
    pending, deadline = set(tasks), None
    try:
        while pending:
            wait = None if deadline is None else max(0.0, deadline - loop.time())
            done, pending = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            for task in done:
                i = index[task]
                if task.exception() is None:
                    results[i] = task.result()
                    answered[rows[i]] += 1
                else:
                    logger.debug("a remote expert call failed: %s", task.exception())
                outstanding[rows[i]] -= 1
            if deadline is None and timeout_after_k_min is not None and bool((answered >= needed).all()):
                deadline = loop.time() + timeout_after_k_min
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        for task in pending:  # retrieve their outcome so none is left unobserved
            if not task.cancelled():
                task.exception()
    return results


class _RemoteCallMany(torch.autograd.Function):
    """Calls many experts on slices of a batch; backward calls those that answered."""

    @staticmethod
    def forward(
        ctx: Any, dummy: torch.Tensor, x: torch.Tensor, moe: RemoteMixtureOfExperts, jobs: list[_Job]
    ):
        x_cpu = x.detach().cpu()
        batch = x_cpu.shape[0]
        calls = [moe._forward_call(job, x_cpu) for job in jobs]
        results = run_blocking(
            _gather_with_k_min(
                calls, [j.rows for j in jobs], batch, moe.k_min, moe.config.timeout_after_k_min
            )
        )
        out_shape = next((r[0].shape[1:] for r in results if r is not None), x_cpu.shape[1:])
        outputs = torch.zeros(batch, moe.k_best, *out_shape, dtype=x_cpu.dtype)
        mask = torch.zeros(batch, moe.k_best, dtype=torch.bool)
        answered_jobs = []
        for job, result in zip(jobs, results, strict=False):
            if result is None:
                continue
            outputs[job.rows, job.slots] = result[0].to(outputs.dtype)
            mask[job.rows, job.slots] = True
            answered_jobs.append(job)
        if not moe.config.allow_zero_outputs:
            answered = mask.sum(1)
            _check_k_min(answered, torch.full_like(answered, moe.k_min), "forward", moe.uid_prefix)
        ctx.moe, ctx.jobs, ctx.device = moe, answered_jobs, x.device
        ctx.save_for_backward(x_cpu)
        ctx.mark_non_differentiable(mask)
        return outputs.to(x.device), mask.to(x.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_outputs: torch.Tensor, _grad_mask: Any):
        (x_cpu,) = ctx.saved_tensors
        moe: RemoteMixtureOfExperts = ctx.moe
        grad_cpu = grad_outputs.detach().cpu().to(x_cpu.dtype)
        calls = [moe._backward_call(job, x_cpu, grad_cpu) for job in ctx.jobs]
        k_min = moe.config.backward_k_min
        results = run_blocking(
            _gather_with_k_min(
                calls, [j.rows for j in ctx.jobs], x_cpu.shape[0], k_min, moe.config.timeout_after_k_min
            )
        )
        grad_x = torch.zeros_like(x_cpu)
        answered = torch.zeros(x_cpu.shape[0], dtype=torch.long)
        for job, result in zip(ctx.jobs, results, strict=False):
            if result is not None:
                grad_x.index_add_(0, job.rows, result[0].to(grad_x.dtype))
                answered[job.rows] += 1
        had_experts = torch.zeros_like(answered)
        for job in ctx.jobs:
            had_experts[job.rows] += 1
        _check_k_min(answered, had_experts.clamp(max=k_min), "backward", moe.uid_prefix)
        return None, grad_x.to(ctx.device), None, None


def _check_k_min(answered: torch.Tensor, need: torch.Tensor, phase: str, prefix: str) -> None:
    short = answered < need
    if bool(short.any()):
        row = int(short.nonzero()[0, 0])
        raise NotEnoughExpertsError(
            f"{phase}: sample {row} got {int(answered[row])} expert answers but needs {int(need[row])} "
            f"({int(short.sum())} of {len(answered)} samples are short; the experts under {prefix!r} are "
            f"dead, slow or not declared)"
        )


class RemoteSwitchMixtureOfExperts(RemoteMixtureOfExperts):
    """Top-1 routing with load balancing (Switch Transformer); `forward(x) -> (output, balancing_loss)`.

    The chosen expert's output is scaled by its gate probability (the product over grid dimensions of
    the softmax probability of its coordinate). A sample whose expert does not answer passes through
    unchanged, so the expert's output must have the input's shape. `balancing_loss` (add it to the
    training loss, times a small factor) pushes the gate towards uniform use of the grid: per
    dimension, `grid_size * sum_i utilization_i * mean_prob_i`, with utilization an exponential moving
    average (`utilization_alpha`) of the fraction of samples routed to coordinate i.
    """

    def __init__(
        self,
        *,
        in_features: int,
        grid_size: Sequence[int],
        dht: DHT | None,
        uid_prefix: str,
        utilization_alpha: float = 0.9,
        jitter_eps: float = 1e-2,
        config: MoEConfig | None = None,
    ):
        config = replace(config or MoEConfig(), allow_zero_outputs=True, backward_k_min=0)
        super().__init__(
            in_features=in_features,
            grid_size=grid_size,
            dht=dht,
            uid_prefix=uid_prefix,
            k_best=1,
            k_min=0,
            config=config,
        )
        if not 0 <= utilization_alpha < 1:
            raise ValueError("utilization_alpha must be in [0, 1)")
        self.utilization_alpha, self.jitter_eps = utilization_alpha, jitter_eps
        for dim, size in enumerate(self.grid_size):
            self.register_buffer(f"utilization_{dim}", torch.full((size,), 1.0 / size))

    def compute_grid_scores(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.training and self.jitter_eps > 0:
            x = x * torch.empty_like(x).uniform_(1 - self.jitter_eps, 1 + self.jitter_eps)
        return [torch.log_softmax(s, dim=-1) for s in super().compute_grid_scores(x)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must be [batch, {self.in_features}], got {tuple(x.shape)}")
        log_probs = self.compute_grid_scores(x)
        chosen = self.find_experts(log_probs)
        outputs, mask = self.call_experts(x, chosen)
        if outputs.shape[2:] != x.shape[1:]:
            raise MoEError(
                f"switch experts must keep the input shape; got outputs {tuple(outputs.shape[2:])}"
            )
        gate = _expert_logits(log_probs, chosen, 1, x.device).exp()  # [batch, 1]
        answered = mask[:, 0]
        output = torch.where(answered[:, None], gate * outputs[:, 0], x)
        return output, self._balancing_loss(log_probs, chosen)

    def _balancing_loss(self, log_probs: list[torch.Tensor], chosen: list[list[ExpertEntry]]) -> torch.Tensor:
        loss = torch.zeros((), device=log_probs[0].device)
        coords = [ExpertUID.parse(entries[0].uid).coords if entries else None for entries in chosen]
        for dim, (scores, size) in enumerate(zip(log_probs, self.grid_size, strict=False)):
            counts = torch.zeros(size)
            for c in coords:
                if c is not None:
                    counts[c[dim]] += 1
            utilization: torch.Tensor = getattr(self, f"utilization_{dim}")
            if self.training and counts.sum() > 0:
                fraction = (counts / counts.sum()).to(utilization.device)
                utilization.mul_(self.utilization_alpha).add_(fraction, alpha=1 - self.utilization_alpha)
            loss = loss + size * (utilization.to(scores.device) * scores.exp().mean(0)).sum()
        return loss


__all__ = ["MoEConfig", "RemoteMixtureOfExperts", "RemoteSwitchMixtureOfExperts"]
