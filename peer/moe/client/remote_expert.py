"""`RemoteExpert`: a torch module whose forward and backward passes run on an expert server.

    expert = RemoteExpert("ffn.3.17", "/ip4/1.2.3.4/tcp/31337/p2p/12D3KooW...", p2p)
    y = expert(x)          # moe.forward/1
    y.sum().backward()     # moe.backward/1: x.grad arrives, and the server applies its optimizer step

The expert's schemas come from `moe.info/1` on first use and are cached; inputs are checked against
them before anything is sent. The backward pass always runs (a dummy tensor that requires grad joins
the graph), because it is what trains the remote expert, even when the inputs need no gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peer.compression import CompressionBase, NoCompression
from peer.moe.client.calls import acall_backward, acall_forward, acall_info, run_blocking
from peer.moe.errors import ExpertInputError
from peer.moe.protocol import ExpertInfo
from peer.moe.schema import check_batch
from peer.net.p2p import P2P, PeerRef


class RemoteExpert(nn.Module):
    """A remote expert as a module (see the module docstring). Timeouts are in seconds (None: none)."""

    def __init__(
        self,
        uid: str,
        peer: PeerRef,
        p2p: P2P,
        *,
        forward_timeout: float | None = None,
        backward_timeout: float | None = None,
        compression: CompressionBase | None = None,
    ):
        super().__init__()
        self.uid = uid
        self.peer = peer
        self.p2p = p2p
        self.forward_timeout = forward_timeout
        self.backward_timeout = backward_timeout
        self.compression = compression or NoCompression()
        self._info: ExpertInfo | None = None
        self._dummy = torch.empty(0, requires_grad=True)

    async def ainfo(self) -> ExpertInfo:
        if self._info is None:
            self._info = await acall_info(self.p2p, self.peer, self.uid, timeout=self.forward_timeout)
        return self._info

    @property
    def info(self) -> ExpertInfo:
        """The expert's schemas and limits (one `moe.info/1` call, then cached)."""
        if self._info is None:
            run_blocking(self.ainfo())
        assert self._info is not None
        return self._info

    def check_inputs(self, inputs: tuple[torch.Tensor, ...]) -> int:
        info = self.info
        return check_batch(
            info.args_schema, inputs, max_batch_size=info.max_batch_size, what=f"{self.uid} forward"
        )

    def forward(self, *inputs: torch.Tensor) -> Any:
        if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
            raise ExpertInputError(f"{self.uid}: forward takes one or more tensors")
        self.check_inputs(inputs)
        outputs = _RemoteCall.apply(self._dummy, self, *inputs)
        return outputs[0] if len(outputs) == 1 else outputs

    def call_forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        coro = acall_forward(
            self.p2p, self.peer, self.uid, inputs, timeout=self.forward_timeout, compression=self.compression
        )
        return run_blocking(coro)

    def call_backward(self, inputs_and_grads: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        coro = acall_backward(
            self.p2p,
            self.peer,
            self.uid,
            inputs_and_grads,
            timeout=self.backward_timeout,
            compression=self.compression,
        )
        return run_blocking(coro)

    def extra_repr(self) -> str:
        return f"uid={self.uid!r}, peer={self.peer}"


class _RemoteCall(torch.autograd.Function):
    """forward: moe.forward/1 on the inputs; backward: moe.backward/1 with the output gradients."""

    @staticmethod
    def forward(
        ctx: Any, dummy: torch.Tensor, expert: RemoteExpert, *inputs: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        cpu_inputs = tuple(x.detach().cpu() for x in inputs)
        ctx.expert = expert
        ctx.devices = [x.device for x in inputs]
        ctx.save_for_backward(*cpu_inputs)
        outputs = expert.call_forward(cpu_inputs)
        device = inputs[0].device
        return tuple(out.to(device) for out in outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inputs = ctx.saved_tensors
        expert: RemoteExpert = ctx.expert
        schemas = expert.info.outputs_schema
        grads = tuple(
            (g if g is not None else torch.zeros(1))
            .detach()
            .cpu()
            .to(s.dtype)
            .expand(inputs[0].shape[0], *s.shape)
            for g, s in zip(grad_outputs, schemas, strict=False)
        )
        grads = tuple(g.contiguous() for g in grads)
        grad_inputs = expert.call_backward((*inputs, *grads))
        result = [
            g.to(device) if inp.is_floating_point() else None
            for g, inp, device in zip(grad_inputs, inputs, ctx.devices, strict=False)
        ]
        return (None, None, *result)


__all__ = ["RemoteExpert"]
