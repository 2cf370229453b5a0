"""`ExpertBackend`: one hosted expert — its module, optimizer, LR schedule and tensor schemas.

`forward(*inputs)` and `backward(*inputs, *grad_outputs)` are plain blocking functions; the
`Runtime` calls them in its worker thread, never on the event loop. `backward` recomputes the
forward pass with autograd, back-propagates the given output gradients, applies the expert's own
optimizer step (and scheduler step), and returns the gradients of the inputs. Tensors come in and go
out on the CPU; the expert itself may live on a CUDA device. A lock serializes every use of the
module, so checkpoints never see a half-applied step.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from peer.moe.schema import TensorSchema, check_batch

DEFAULT_MAX_BATCH_SIZE = 4096


class ExpertBackend:
    """A hosted expert: `expert(*inputs) -> output(s)` plus what the server needs to serve it."""

    def __init__(
        self,
        name: str,
        expert: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        scheduler: Any | None = None,
        args_schema: Sequence[TensorSchema],
        outputs_schema: Sequence[TensorSchema] | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        device: torch.device | str = "cpu",
    ):
        if not args_schema:
            raise ValueError("args_schema must describe at least one input tensor")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
        self.name = name
        self.expert_cls = type(expert).__name__  # the server sets the registered name
        self.device = torch.device(device)
        self.expert = expert.to(self.device)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.args_schema = tuple(args_schema)
        self.max_batch_size = max_batch_size
        self.examples_processed = 0
        self.update_count = 0
        self._lock = threading.Lock()
        if outputs_schema is None:
            sample = tuple(schema.zeros(2) for schema in self.args_schema)
            outputs_schema = [TensorSchema.from_tensor(out) for out in self.forward(*sample)]
        self.outputs_schema = tuple(outputs_schema)

    # ---- compute (called from the runtime's worker thread) -----------------------------------

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Outputs for a batch of inputs (no gradients kept)."""
        with self._lock, torch.no_grad():
            outputs = self.expert(*(x.to(self.device) for x in inputs))
        return tuple(out.detach().cpu() for out in _as_tuple(outputs))

    def backward(self, *inputs_and_grads: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Gradients of the inputs given the inputs and the output gradients; steps the optimizer."""
        num_args = len(self.args_schema)
        inputs, grad_outputs = inputs_and_grads[:num_args], inputs_and_grads[num_args:]
        if len(grad_outputs) != len(self.outputs_schema):
            raise ValueError(f"expected {len(self.outputs_schema)} output gradients, got {len(grad_outputs)}")
        with self._lock:
            inputs = tuple(self._leaf(x) for x in inputs)
            with torch.enable_grad():
                outputs = _as_tuple(self.expert(*inputs))
                pairs: list[tuple[torch.Tensor, torch.Tensor]]
                pairs = [
                    (o, g.to(self.device))
                    for o, g in zip(outputs, grad_outputs, strict=True)
                    if o.requires_grad
                ]
                if pairs:
                    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
            grads = tuple(
                (x.grad if x.grad is not None else torch.zeros_like(x)).detach().cpu() for x in inputs
            )
            self._apply_step(batch_size=int(inputs[0].shape[0]))
        return grads

    def _leaf(self, tensor: torch.Tensor) -> torch.Tensor:
        leaf = tensor.to(self.device).detach()
        if leaf.is_floating_point():
            leaf.requires_grad_(True)
        return leaf

    def _apply_step(self, batch_size: int) -> None:
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.expert.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        self.examples_processed += batch_size
        self.update_count += 1

    def check_inputs(self, tensors: Sequence[torch.Tensor], *, backward: bool) -> int:
        """Validate a request's tensors against the schemas; returns the batch size."""
        schemas = self.args_schema + self.outputs_schema if backward else self.args_schema
        what = f"{self.name} {'backward' if backward else 'forward'}"
        return check_batch(schemas, tensors, max_batch_size=self.max_batch_size, what=what)

    # ---- state (checkpoints) ---------------------------------------------------------------

    def module_state(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the expert module's parameters and buffers, in `state_dict` order."""
        with self._lock:
            return {k: v.detach().cpu().clone() for k, v in self.expert.state_dict().items()}

    def load_module_state(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the module's parameters and buffers (e.g. with another replica's); the optimizer
        state is kept."""
        with self._lock:
            self.expert.load_state_dict(state)

    def mix_module_state(self, state: dict[str, torch.Tensor], weight: float) -> int:
        """Move the module's floating-point parameters and buffers the fraction `weight` of the way
        toward `state` (another replica's, as `module_state` gives it): p <- p + weight * (state - p).
        Integer buffers and the optimizer state are kept. Returns how many tensors moved."""
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], got {weight!r}")
        with self._lock, torch.no_grad():
            own = self.expert.state_dict()  # the live tensors (detached views)
            if own.keys() != state.keys():
                raise ValueError(f"{self.name}: the replica's state names other tensors than this expert's")
            moved = 0
            for name, tensor in own.items():
                other = state[name]
                if other.shape != tensor.shape:
                    raise ValueError(f"{self.name}: {name} has shape {tuple(other.shape)} in the replica")
                if tensor.is_floating_point():
                    tensor.lerp_(other.to(tensor.device, tensor.dtype), weight)
                    moved += 1
            return moved

    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "model": {k: v.detach().cpu().clone() for k, v in self.expert.state_dict().items()},
                "optimizer": _cpu_copy(self.optimizer.state_dict()) if self.optimizer is not None else None,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "examples_processed": self.examples_processed,
                "update_count": self.update_count,
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._lock:
            self.expert.load_state_dict(state["model"])
            if self.optimizer is not None and state.get("optimizer") is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            self.examples_processed = int(state.get("examples_processed", 0))
            self.update_count = int(state.get("update_count", 0))


def _as_tuple(outputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    if isinstance(outputs, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in outputs):
        return tuple(outputs)
    raise TypeError(f"an expert must return a tensor or a tuple of tensors, got {type(outputs).__name__}")


def _cpu_copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cpu_copy(v) for v in value]
    return value


__all__ = ["DEFAULT_MAX_BATCH_SIZE", "ExpertBackend"]
