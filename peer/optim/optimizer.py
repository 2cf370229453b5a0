"""`peer.Optimizer`: many peers train one model, one global batch (`target_batch_size`) per epoch.

Gradient mode (default): each `step()` adds this peer's gradients to an accumulator. The progress
tracker publishes and reads everyone's samples in the DHT; when the swarm has accumulated the target
batch, peers average their mean gradients (weighted by their samples) with a Moshpit group, apply the
inner optimizer, and move to the next epoch. Every `state_averaging_period` epochs they also average
parameters and optimizer statistics. A peer that finds itself behind the swarm's epoch downloads the
state from the most advanced peer. The LR schedule steps once per global epoch.

Local-updates mode (DiLoCo, `OptimizerConfig.local_updates`): each `step()` is a local optimizer
step; every `inner_steps` steps the peers average the pseudo-gradient (the change since the last
sync) and apply it with an outer Nesterov SGD step, so they talk `inner_steps` times less.

Offloaded optimizer (`offload_optimizer`): the inner optimizer updates a float32 master copy of the
parameters in CPU memory, so its statistics live there too (`peer.optim.master`). Each step copies
the gradients to the CPU, steps there and copies the parameters back: the same trajectory as without
offloading, up to float rounding when the model itself is in a lower precision.

Delayed step (`delay_optimizer_step`): the work a `step()` triggers after accounting its batch (an
epoch's gradient averaging, inner step and state averaging; in DiLoCo mode the local step and every
`inner_steps` the outer sync) runs in a background thread on the master copy, while the caller runs
the next batch's forward and backward on the model's parameters, which nothing writes meanwhile. The
next `step()` (and `catch_up`, `state_dict`, `load_state_dict`, `shutdown`, `wait`) first waits for
that background work and then copies its result into the model. So the batch that overlapped a step
had its gradients computed on parameters one step stale, and they count towards the next epoch; the
parameters the caller sees are never more than one step behind, and never half-written.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from peer.averaging import AveragingConfig, DecentralizedAverager
from peer.dht import DHT, get_dht_time
from peer.optim.background import BackgroundStep
from peer.optim.config import OptimizerConfig
from peer.optim.master import MasterParams
from peer.optim.progress import MAX_ABS_LOSS, GlobalProgress, ProgressRecord, ProgressTracker
from peer.utils.loop import run_coroutine

logger = logging.getLogger(__name__)

OptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class Optimizer:
    """A collaborative optimizer (see the module docstring). Use like a torch optimizer:
    `loss.backward(); opt.step(batch_size=len(batch))` (it clears the gradients itself).

    `optimizer` builds the inner torch optimizer from a list of tensors: the model's parameters, or
    their master copies when the optimizer is offloaded or its step delayed. `num_averaging_rounds`
    counts the all-reduce rounds this peer completed (gradients or pseudo-gradients, and state).
    """

    def __init__(
        self,
        *,
        dht: DHT,
        run_id: str,
        params: Iterable[torch.nn.Parameter],
        optimizer: OptimizerFactory,
        config: OptimizerConfig,
        scheduler: SchedulerFactory | None = None,
        batch_size_per_step: int | None = None,
    ):
        if not isinstance(config, OptimizerConfig):
            raise TypeError(f"config: expected an OptimizerConfig, got {type(config).__name__}")
        self.dht, self.run_id, self.config = dht, run_id, config
        self.params: list[torch.Tensor] = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("params: nothing to optimize (no parameter requires grad)")
        self.master: MasterParams | None = None
        if config.offload_optimizer or config.delay_optimizer_step:
            self.master = MasterParams(self.params, offload=config.offload_optimizer)
        self.inner = optimizer(self.optimized_tensors)
        self.scheduler = scheduler(self.inner) if scheduler is not None else None
        self.batch_size_per_step = batch_size_per_step
        self.local_epoch = 0
        self.local_samples = 0  # since the last epoch (gradient mode) or sync (DiLoCo)
        self.mini_steps = 0
        self.total_samples = 0  # ever processed here (the site's leaderboard reads it)
        self.num_averaging_rounds = 0
        self.samples_per_second = 0.0
        self.last_loss: float | None = None
        self.tracker = ProgressTracker(dht, run_id, config.target_batch_size)
        self.global_progress: GlobalProgress | None = None
        self._last_step_time = time.monotonic()
        self._last_fetch = -math.inf  # when global_progress was read from the DHT (monotonic clock)
        self._background = BackgroundStep(f"{run_id}-step") if config.delay_optimizer_step else None
        self._buffers = [torch.zeros_like(p, device="cpu") for p in self.params]
        self._init_optimizer_state()
        self._make_averagers()
        self._anchor: list[torch.Tensor] | None = None
        self._outer: torch.optim.Optimizer | None = None
        if config.local_updates is not None:
            self._anchor = [t.detach().clone() for t in self.optimized_tensors]
            self._outer = torch.optim.SGD(
                self._anchor,
                lr=config.local_updates.outer_lr,
                momentum=config.local_updates.outer_momentum,
                nesterov=True,
            )

    @property
    def optimized_tensors(self) -> list[torch.Tensor]:
        """What the inner optimizer updates: the master copies, or the model's own parameters."""
        return self.master.tensors if self.master is not None else self.params

    def _make_averagers(self) -> None:
        options = self.config.averaging
        common: dict[str, Any] = dict(
            target_group_size=options.target_group_size,
            min_group_size=options.min_group_size,
            min_matchmaking_time=options.min_matchmaking_time,
            request_timeout=options.request_timeout,
            client_mode=self.config.client_mode,
        )
        self.grad_averager = DecentralizedAverager(
            self._buffers,
            self.dht,
            prefix=f"{self.run_id}_grads",
            compression=options.gradient_compression,
            **common,
        )
        self.state_averager = DecentralizedAverager(
            self._state_tensors(),
            self.dht,
            prefix=f"{self.run_id}_state",
            compression=options.state_compression,
            config=AveragingConfig(declare_state_period=5.0),
            **common,
        )

    # ---- the training step -----------------------------------------------------------------

    def step(self, batch_size: int | None = None, loss: float | None = None) -> bool:
        """Account for one local batch whose gradients are in `.grad`; True when an epoch ended (with
        `delay_optimizer_step`: when this call started the epoch's step in the background)."""
        size = batch_size or self.batch_size_per_step
        if not size or size < 1:
            raise ValueError("batch_size: pass the number of samples in this batch (or batch_size_per_step)")
        self.wait()
        self._account(size, loss)
        if self.config.local_updates is not None:
            if self.master is not None:  # the next backward may overwrite .grad while the step runs
                self.master.set_grads([param.grad for param in self.params])
                for param in self.params:
                    param.grad = None
            sync = self.mini_steps % self.config.local_updates.inner_steps == 0
            self._run(functools.partial(self._local_step, sync))
            return sync
        with torch.no_grad():
            for buffer, param in zip(self._buffers, self.params, strict=True):
                if param.grad is not None:
                    buffer.add_(param.grad.detach().to(buffer.device))
                    param.grad = None
        progress = self._sync_progress()
        if self._swarm_samples(progress) >= progress.target_batch_size:
            # about to step: never on a stale view alone (the others may have moved on, or slowed)
            if time.monotonic() - self._last_fetch > self.config.progress_period / 4:
                progress = self._sync_progress(force=True)
        if progress.epoch > self.local_epoch:
            self.catch_up(progress.epoch)
            return False
        if self._swarm_samples(progress) >= progress.target_batch_size:
            self._run(self._global_step)
            return True
        return False

    def _swarm_samples(self, progress: GlobalProgress) -> float:
        """This epoch's samples so far: ours, plus the others' as reported and extrapolated since."""
        if progress.epoch != self.local_epoch:  # nobody else has been seen at our epoch yet
            return float(self.local_samples)
        return progress.estimated_samples(get_dht_time(), exclude=self.dht.peer_id) + self.local_samples

    def wait(self) -> None:
        """Finish a delayed step still running in the background and copy its result into the model
        (re-raising what it raised); a no-op otherwise."""
        if self._background is not None and self._background.busy:
            self._background.wait()
            self._push()

    def _account(self, size: int, loss: float | None) -> None:
        now = time.monotonic()
        elapsed = max(now - self._last_step_time, 1e-6)
        self._last_step_time = now
        rate = size / elapsed
        self.samples_per_second = rate if not self.mini_steps else 0.8 * self.samples_per_second + 0.2 * rate
        self.mini_steps += 1
        self.local_samples += size
        self.total_samples += size
        self.last_loss = loss

    def _run(self, job: Callable[[], None]) -> None:
        if self._background is not None:
            self._background.submit(job)
        else:
            job()
            self._push()

    def _push(self) -> None:
        if self.master is not None:
            self.master.push()

    def _alone(self) -> bool:
        """Whether no other peer has published progress lately, so waiting for a group is pointless.
        Peers publish at least every `progress_period` while they train, and right before and after
        each averaging (which lasts at most `averaging_timeout`); a peer that left stops counting
        once that much time has passed. A peer that is behind still counts: it is catching up, and
        waiting for it (at most `averaging_timeout`) lets it in, instead of running away from it."""
        progress, me = self.global_progress, self.dht.peer_id
        if progress is None:
            return False
        horizon = get_dht_time() - self.config.averaging.averaging_timeout - 2 * self.config.progress_period
        return not any(record.time >= horizon for peer_id, record in progress.peers.items() if peer_id != me)

    def _average(self, averager: DecentralizedAverager, weight: float = 1.0) -> bool:
        """One all-reduce round with a group; False when none formed or the round failed."""
        if averager.step(weight=weight, timeout=self.config.averaging.averaging_timeout):
            self.num_averaging_rounds += 1
            return True
        return False

    def _global_step(self) -> None:
        self._publish()  # our whole contribution: the others see that this epoch is complete
        weight = max(self.local_samples, 1)
        with torch.no_grad():
            for buffer in self._buffers:
                buffer.div_(weight)
        if not self._alone() and not self._average(self.grad_averager, float(weight)):
            logger.info("%s epoch %d: no group; stepping with local gradients", self.run_id, self.local_epoch)
        with torch.no_grad(), self.grad_averager.get_tensors() as averaged:
            for target, gradient in zip(self.optimized_tensors, averaged, strict=True):
                target.grad = gradient.to(device=target.device, dtype=target.dtype, copy=True)
        self.inner.step()
        self.inner.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        with torch.no_grad():
            for buffer in self._buffers:
                buffer.zero_()
        self._finish_epoch()

    def _local_step(self, sync: bool) -> None:
        assert self.config.local_updates is not None and self._anchor is not None and self._outer is not None
        self.inner.step()
        self.inner.zero_grad(set_to_none=True)
        if not sync:
            self._sync_progress()
            return
        self._sync_progress(force=True)  # peers sync by their own step counts: is anyone else here?
        tensors = self.optimized_tensors
        with torch.no_grad():
            for buffer, anchor, tensor in zip(self._buffers, self._anchor, tensors, strict=True):
                buffer.copy_((anchor - tensor.detach()).to(buffer.device))
        if not self._alone() and not self._average(self.grad_averager, float(max(self.local_samples, 1))):
            logger.info("%s outer step %d: no group; applying our own change", self.run_id, self.local_epoch)
        with torch.no_grad(), self.grad_averager.get_tensors() as pseudo_gradients:
            for anchor, gradient in zip(self._anchor, pseudo_gradients, strict=True):
                anchor.grad = gradient.to(device=anchor.device, dtype=anchor.dtype, copy=True)
            self._outer.step()
            for anchor, tensor in zip(self._anchor, tensors, strict=True):
                tensor.copy_(anchor)
                anchor.grad = None
        if self.scheduler is not None:
            self.scheduler.step()
        self._finish_epoch()

    def _finish_epoch(self) -> None:
        self.local_epoch += 1
        self.local_samples = 0
        self.state_averager.state_priority = float(self.local_epoch)
        self.state_averager.state_metadata = {"epoch": self.local_epoch}
        self._copy_state_out()  # what newcomers download is always the current state
        self._publish()
        self._last_fetch = -math.inf  # the swarm's view is of the last epoch: read it again
        if self.local_epoch % self.config.state_averaging_period == 0 and not self._alone():
            self._average_state()

    def _average_state(self) -> None:
        if self._average(self.state_averager):
            self._copy_state_in()
            self._reset_anchor()

    def _reset_anchor(self) -> None:
        if self._anchor is not None:
            with torch.no_grad():
                for anchor, tensor in zip(self._anchor, self.optimized_tensors, strict=True):
                    anchor.copy_(tensor)

    # ---- catching up -------------------------------------------------------------------------

    def catch_up(self, epoch: int | None = None) -> bool:
        """Download the most advanced peer's parameters and optimizer state; True if one answered."""
        self.wait()
        loaded = self.state_averager.load_state_from_peers()
        if loaded is not None:
            self._copy_state_in()
            metadata = loaded[0] if isinstance(loaded[0], dict) else {}
            self.local_epoch = max(int(metadata.get("epoch", 0)), epoch or 0)
            self._reset_anchor()
            self._push()
            logger.info("%s: loaded the swarm's state at epoch %d", self.run_id, self.local_epoch)
        elif epoch is not None:
            self.local_epoch = epoch  # nobody could serve a state: follow the epoch anyway
        with torch.no_grad():
            for buffer in self._buffers:
                buffer.zero_()
        self.local_samples = 0
        self.state_averager.state_priority = float(self.local_epoch)
        self.state_averager.state_metadata = {"epoch": self.local_epoch}
        self._last_fetch = -math.inf
        return loaded is not None

    # ---- progress ------------------------------------------------------------------------------

    def _record(self) -> ProgressRecord:
        last = self.last_loss  # a diverged (inf, nan) or absurd loss is not published, never a crash
        loss = last if last is not None and math.isfinite(last) and abs(last) < MAX_ABS_LOSS else None
        return ProgressRecord(
            epoch=self.local_epoch,
            samples_accumulated=self.local_samples,
            samples_per_second=max(self.samples_per_second, 0.0),
            loss=loss,
            mini_steps=self.mini_steps,
            total_samples=self.total_samples,
            time=get_dht_time(),
            client_mode=self.config.client_mode,
        )

    def _publish(self) -> None:
        run_coroutine(self.tracker.apublish(self._record()))

    def _sync_progress(self, force: bool = False) -> GlobalProgress:
        """The swarm's progress: published and fetched again every `progress_period` (or when
        `force`d), otherwise the last view (`_swarm_samples` adds our samples since)."""
        if force or time.monotonic() - self._last_fetch >= self.config.progress_period:
            local = self._record()
            run_coroutine(self.tracker.apublish(local))
            self.global_progress = run_coroutine(self.tracker.afetch(local))
            self._last_fetch = time.monotonic()
        assert self.global_progress is not None
        return self.global_progress

    # ---- state tensors -----------------------------------------------------------------------

    def _init_optimizer_state(self) -> None:
        """Create the optimizer's statistics now (a zero-lr step on zero gradients), so every peer's
        state has the same tensors from the start and can be averaged and downloaded."""
        saved = [(group.get("lr"), group.get("weight_decay")) for group in self.inner.param_groups]
        for group in self.inner.param_groups:
            group["lr"] = 0.0
            if "weight_decay" in group:
                group["weight_decay"] = 0.0
        for tensor in self.optimized_tensors:
            tensor.grad = torch.zeros_like(tensor)
        self.inner.step()
        self.inner.zero_grad(set_to_none=True)
        for group, (lr, weight_decay) in zip(self.inner.param_groups, saved, strict=True):
            group["lr"] = lr
            if weight_decay is not None:
                group["weight_decay"] = weight_decay
        for state in self.inner.state.values():
            if "step" in state:
                state["step"] = torch.zeros_like(state["step"]) if torch.is_tensor(state["step"]) else 0

    def _optimizer_tensors(self) -> list[torch.Tensor]:
        tensors = []
        for tensor in self.optimized_tensors:
            for name, value in sorted(self.inner.state.get(tensor, {}).items()):
                if torch.is_tensor(value) and value.is_floating_point() and name != "step":
                    tensors.append(value)
        return tensors

    def _state_tensors(self) -> list[torch.Tensor]:
        """The state averager's tensors: CPU copies of the parameters (as the inner optimizer holds
        them) and of the optimizer's floating-point statistics, in a fixed order."""
        self._state_view = [t.detach().cpu().clone() for t in self.optimized_tensors] + [
            t.detach().cpu().clone() for t in self._optimizer_tensors()
        ]
        return self._state_view

    def _copy_state_out(self) -> None:
        with torch.no_grad(), self.state_averager.get_tensors() as view:
            _copy_all(view, [*self.optimized_tensors, *self._optimizer_tensors()])

    def _copy_state_in(self) -> None:
        with torch.no_grad(), self.state_averager.get_tensors() as view:
            _copy_all([*self.optimized_tensors, *self._optimizer_tensors()], view)

    # ---- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a restart needs: epoch, counters, parameters, the inner optimizer's state and,
        in DiLoCo mode, the outer optimizer and its anchor (the parameters at the last sync)."""
        self.wait()
        state: dict[str, Any] = {
            "epoch": self.local_epoch,
            "total_samples": self.total_samples,
            "averaging_rounds": self.num_averaging_rounds,
            "optimizer": self.inner.state_dict(),
            "params": [t.detach().cpu() for t in self.optimized_tensors],
        }
        if self._anchor is not None and self._outer is not None:
            state["outer"] = {
                "optimizer": self._outer.state_dict(),
                "anchor": [t.detach().cpu() for t in self._anchor],
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`'s output (from this or another mode: offloaded or not, delayed or
        not); a DiLoCo optimizer without a saved anchor restarts its inner loop from the parameters."""
        self.wait()
        saved = state["params"]
        if len(saved) != len(self.params):
            raise ValueError(f"state: it has {len(saved)} parameters, this model has {len(self.params)}")
        with torch.no_grad():
            _copy_all(self.optimized_tensors, saved)
        self.inner.load_state_dict(state["optimizer"])
        self.local_epoch = int(state["epoch"])
        self.total_samples = int(state.get("total_samples", 0))
        self.num_averaging_rounds = int(state.get("averaging_rounds", 0))
        self._reset_anchor()
        outer = state.get("outer")
        if self._anchor is not None and self._outer is not None and isinstance(outer, dict):
            with torch.no_grad():
                _copy_all(self._anchor, outer["anchor"])
            self._outer.load_state_dict(outer["optimizer"])
        self._copy_state_out()
        self._push()
        self.state_averager.state_priority = float(self.local_epoch)
        self.state_averager.state_metadata = {"epoch": self.local_epoch}
        self._last_fetch = -math.inf

    def shutdown(self) -> None:
        """Finish a delayed step (the model gets its result), then stop averaging."""
        try:
            self.wait()
        finally:
            self._shutdown_parts()

    def _shutdown_parts(self) -> None:
        try:
            if self._background is not None:
                self._background.shutdown()
        finally:
            self.grad_averager.shutdown()
            self.state_averager.shutdown()


def _copy_all(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor]) -> None:
    """`target.copy_(source)` pairwise, each source moved to its target's device (and dtype); a
    ValueError, before anything is written, when the counts or shapes differ."""
    if len(targets) != len(sources):
        raise ValueError(f"expected {len(targets)} tensors, got {len(sources)}")
    for target, source in zip(targets, sources, strict=True):  # check everything before writing anything
        if not torch.is_tensor(source) or target.shape != source.shape:
            shape = tuple(source.shape) if torch.is_tensor(source) else type(source).__name__
            raise ValueError(f"a saved tensor of shape {shape} cannot fill one of {tuple(target.shape)}")
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source.detach().to(target.device))
