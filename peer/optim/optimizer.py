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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from peer.averaging import AveragingConfig, DecentralizedAverager
from peer.dht import DHT, get_dht_time
from peer.optim.config import OptimizerConfig
from peer.optim.progress import GlobalProgress, ProgressRecord, ProgressTracker
from peer.utils.loop import run_coroutine

logger = logging.getLogger(__name__)

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class Optimizer:
    """A collaborative optimizer (see the module docstring). Use like a torch optimizer:
    `loss.backward(); opt.step(batch_size=len(batch))` (it clears the gradients itself)."""

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
        self.dht, self.run_id, self.config = dht, run_id, config
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("params: nothing to optimize (no parameter requires grad)")
        self.inner = optimizer(self.params)
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
        self._last_sync = 0.0
        self._buffers = [torch.zeros_like(p, device="cpu") for p in self.params]
        self._init_optimizer_state()
        options = config.averaging
        common = dict(
            target_group_size=options.target_group_size,
            min_group_size=options.min_group_size,
            min_matchmaking_time=options.min_matchmaking_time,
            request_timeout=options.request_timeout,
            client_mode=config.client_mode,
        )
        self.grad_averager = DecentralizedAverager(
            self._buffers, dht, prefix=f"{run_id}_grads", compression=options.gradient_compression, **common
        )
        self.state_averager = DecentralizedAverager(
            self._state_tensors(),
            dht,
            prefix=f"{run_id}_state",
            compression=options.state_compression,
            config=AveragingConfig(declare_state_period=5.0),
            **common,
        )
        self._anchor: list[torch.Tensor] | None = None
        self._outer: torch.optim.Optimizer | None = None
        if config.local_updates is not None:
            self._anchor = [p.detach().clone() for p in self.params]
            self._outer = torch.optim.SGD(
                self._anchor,
                lr=config.local_updates.outer_lr,
                momentum=config.local_updates.outer_momentum,
                nesterov=True,
            )

    # ---- the training step -----------------------------------------------------------------

    def step(self, batch_size: int | None = None, loss: float | None = None) -> bool:
        """Account for one local batch whose gradients are in `.grad`; True when an epoch ended."""
        size = batch_size or self.batch_size_per_step
        if not size or size < 1:
            raise ValueError("batch_size: pass the number of samples in this batch (or batch_size_per_step)")
        now = time.monotonic()
        elapsed = max(now - self._last_step_time, 1e-6)
        self._last_step_time = now
        rate = size / elapsed
        self.samples_per_second = rate if not self.mini_steps else 0.8 * self.samples_per_second + 0.2 * rate
        self.mini_steps += 1
        self.local_samples += size
        self.total_samples += size
        self.last_loss = loss
        if self.config.local_updates is not None:
            return self._local_step()
        with torch.no_grad():
            for buffer, param in zip(self._buffers, self.params, strict=True):
                if param.grad is not None:
                    buffer.add_(param.grad.detach().to(buffer.device))
                    param.grad = None
        progress = self._sync_progress()
        if progress.epoch > self.local_epoch:
            self.catch_up(progress.epoch)
            return False
        if progress.ready_to_step:
            self._global_step()
            return True
        return False

    def _global_step(self) -> None:
        weight = max(self.local_samples, 1)
        with torch.no_grad():
            for buffer in self._buffers:
                buffer.div_(weight)
        alone = self.global_progress is not None and self.global_progress.num_peers <= 1  # nobody to wait for
        if not alone and self.grad_averager.step(
            weight=float(weight), timeout=self.config.averaging.averaging_timeout
        ):
            self.num_averaging_rounds += 1
        elif not alone:
            logger.info(
                "%s epoch %d: no averaging group; stepping with local gradients",
                self.run_id,
                self.local_epoch,
            )
        with torch.no_grad(), self.grad_averager.get_tensors() as averaged:
            for param, gradient in zip(self.params, averaged, strict=True):
                param.grad = gradient.to(param.device, copy=True)
        self._apply_inner_step()
        with torch.no_grad():
            for buffer in self._buffers:
                buffer.zero_()
        self._finish_epoch()

    def _apply_inner_step(self) -> None:
        self.inner.step()
        self.inner.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()

    def _local_step(self) -> bool:
        assert self.config.local_updates is not None and self._anchor is not None and self._outer is not None
        self.inner.step()
        self.inner.zero_grad(set_to_none=True)
        if self.mini_steps % self.config.local_updates.inner_steps:
            self._sync_progress()
            return False
        with torch.no_grad():
            for buffer, anchor, param in zip(self._buffers, self._anchor, self.params, strict=True):
                buffer.copy_(anchor - param.detach().cpu())
        if self.grad_averager.step(
            weight=float(max(self.local_samples, 1)), timeout=self.config.averaging.averaging_timeout
        ):
            self.num_averaging_rounds += 1
        with torch.no_grad(), self.grad_averager.get_tensors() as pseudo_gradients:
            for anchor, gradient in zip(self._anchor, pseudo_gradients, strict=True):
                anchor.grad = gradient.clone()
            self._outer.step()
            for anchor, param in zip(self._anchor, self.params, strict=True):
                param.copy_(anchor)
                anchor.grad = None
        if self.scheduler is not None:
            self.scheduler.step()
        self._finish_epoch()
        return True

    def _finish_epoch(self) -> None:
        self.local_epoch += 1
        self.local_samples = 0
        self.state_averager.state_priority = float(self.local_epoch)
        self.state_averager.state_metadata = {"epoch": self.local_epoch}
        self._copy_state_out()  # what newcomers download is always the current state
        self._publish()
        if self.local_epoch % self.config.state_averaging_period == 0:
            self._average_state()

    def _average_state(self) -> None:
        if self.state_averager.step(timeout=self.config.averaging.averaging_timeout):
            self._copy_state_in()
            if self._anchor is not None:
                with torch.no_grad():
                    for anchor, param in zip(self._anchor, self.params, strict=True):
                        anchor.copy_(param)

    # ---- catching up -------------------------------------------------------------------------

    def catch_up(self, epoch: int | None = None) -> bool:
        """Download the most advanced peer's parameters and optimizer state; True if one answered."""
        loaded = self.state_averager.load_state_from_peers()
        if loaded is not None:
            self._copy_state_in()
            metadata = loaded[0] if isinstance(loaded[0], dict) else {}
            self.local_epoch = max(int(metadata.get("epoch", 0)), epoch or 0)
            if self._anchor is not None:
                with torch.no_grad():
                    for anchor, param in zip(self._anchor, self.params, strict=True):
                        anchor.copy_(param)
            logger.info("%s: loaded the swarm's state at epoch %d", self.run_id, self.local_epoch)
        elif epoch is not None:
            self.local_epoch = epoch  # nobody could serve a state: follow the epoch anyway
        with torch.no_grad():
            for buffer in self._buffers:
                buffer.zero_()
        self.local_samples = 0
        self.state_averager.state_priority = float(self.local_epoch)
        self.state_averager.state_metadata = {"epoch": self.local_epoch}
        return loaded is not None

    # ---- progress ------------------------------------------------------------------------------

    def _record(self) -> ProgressRecord:
        loss = self.last_loss if self.last_loss is not None and self.last_loss == self.last_loss else None
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
        self._last_sync = time.monotonic()

    def _sync_progress(self) -> GlobalProgress:
        local = self._record()
        if time.monotonic() - self._last_sync >= self.config.progress_period or self.global_progress is None:
            run_coroutine(self.tracker.apublish(local))
            self.global_progress = run_coroutine(self.tracker.afetch(local))
            self._last_sync = time.monotonic()
            return self.global_progress
        # between syncs, count our own new samples on top of the last global view
        previous = self.global_progress
        others = (
            previous.samples_accumulated - previous.peers.get(self.dht.peer_id, local).samples_accumulated
        )
        return GlobalProgress(
            previous.epoch,
            others + local.samples_accumulated,
            previous.target_batch_size,
            previous.samples_per_second,
            previous.num_peers,
            previous.eta_next_epoch,
            previous.peers,
        )

    # ---- state tensors -----------------------------------------------------------------------

    def _init_optimizer_state(self) -> None:
        """Create the optimizer's statistics now (a zero-lr step on zero gradients), so every peer's
        state has the same tensors from the start and can be averaged and downloaded."""
        saved = [(group.get("lr"), group.get("weight_decay")) for group in self.inner.param_groups]
        for group in self.inner.param_groups:
            group["lr"] = 0.0
            if "weight_decay" in group:
                group["weight_decay"] = 0.0
        for param in self.params:
            param.grad = torch.zeros_like(param)
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
        for param in self.params:
            for name, value in sorted(self.inner.state.get(param, {}).items()):
                if torch.is_tensor(value) and value.is_floating_point() and name != "step":
                    tensors.append(value)
        return tensors

    def _state_tensors(self) -> list[torch.Tensor]:
        self._state_view = [p.detach().cpu().clone() for p in self.params] + [
            t.detach().cpu().clone() for t in self._optimizer_tensors()
        ]
        return self._state_view

    def _copy_state_out(self) -> None:
        with torch.no_grad(), self.state_averager.get_tensors() as view:
            for target, source in zip(view, [*self.params, *self._optimizer_tensors()], strict=True):
                target.copy_(source.detach().cpu())

    def _copy_state_in(self) -> None:
        with torch.no_grad(), self.state_averager.get_tensors() as view:
            for source, target in zip(view, [*self.params, *self._optimizer_tensors()], strict=True):
                target.copy_(source.to(target.device))

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.local_epoch,
            "total_samples": self.total_samples,
            "optimizer": self.inner.state_dict(),
            "params": [p.detach().cpu() for p in self.params],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for param, saved in zip(self.params, state["params"], strict=True):
                param.copy_(saved)
        self.inner.load_state_dict(state["optimizer"])
        self.local_epoch = int(state["epoch"])
        self.total_samples = int(state.get("total_samples", 0))

    def shutdown(self) -> None:
        self.grad_averager.shutdown()
        self.state_averager.shutdown()
