"""`MasterParams`: the copy of a model's parameters that the inner optimizer updates instead of the
model itself.

- Offloaded (`offload=True`): the copy lives in CPU memory in at least float32 (fp16/bf16 become
  float32, float64 stays), so the inner optimizer and all its statistics live there too. A GPU keeps
  only the model and its gradients; each step copies the gradients to the CPU, steps there and copies
  the result back (`push`).
- Shadow (`offload=False`): a same-device, same-dtype clone. Delayed steps update it in a background
  thread while the next batch's forward/backward reads the model's own parameters; the foreground
  `push`es it into the model when no forward/backward is running.

`push()` copies the master values into the model's parameters; `pull()` copies the other way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def master_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an offloaded master copy of a `dtype` parameter uses (at least float32)."""
    return torch.promote_types(dtype, torch.float32) if dtype.is_floating_point else dtype


class MasterParams:
    """Master copies of `params` (see the module docstring)."""

    def __init__(self, params: Sequence[torch.Tensor], *, offload: bool):
        self.params = list(params)
        self.offload = offload
        self.tensors = [self._make(param) for param in self.params]

    def _make(self, param: torch.Tensor) -> torch.Tensor:
        if not self.offload:
            return param.detach().clone()
        master = torch.empty(
            param.shape,
            dtype=master_dtype(param.dtype),
            device="cpu",
            pin_memory=param.is_cuda,  # page-locked memory makes the copies to and from the GPU faster
        )
        with torch.no_grad():
            master.copy_(param.detach())
        return master

    def set_grads(self, gradients: Sequence[torch.Tensor | None]) -> None:
        """Make `gradients` (one per parameter, any device and dtype) the masters' `.grad`."""
        for master, gradient in zip(self.tensors, gradients, strict=True):
            master.grad = (
                None
                if gradient is None
                else gradient.detach().to(device=master.device, dtype=master.dtype, copy=True)
            )

    def push(self) -> None:
        """Copy the masters into the model's parameters."""
        with torch.no_grad():
            for param, master in zip(self.params, self.tensors, strict=True):
                param.copy_(master)

    def pull(self) -> None:
        """Copy the model's parameters into the masters."""
        with torch.no_grad():
            for param, master in zip(self.params, self.tensors, strict=True):
                master.copy_(param.detach())
