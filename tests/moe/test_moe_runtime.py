"""Expert modules, `ExpertBackend` (forward, backward with its own optimizer step) and `Runtime` batching."""

from __future__ import annotations

import asyncio
import copy
import threading

import pytest
import torch

from peer.moe import BatchingConfig, ExpertBackend, MoEError, Runtime, TaskPool, TensorSchema
from peer.moe.errors import ExpertInputError
from peer.moe.experts import get_expert_class, register_expert_class, registered_expert_classes


def test_builtin_expert_classes_build_and_keep_the_hidden_shape() -> None:
    assert {"ffn", "transformer", "nop"} <= set(registered_expert_classes())
    for name in ("ffn", "transformer", "nop"):
        spec = get_expert_class(name)
        (sample,) = spec.sample_inputs(3, 8)
        sample = torch.randn_like(sample)
        assert spec.build(8)(sample).shape == sample.shape


def test_user_expert_classes_register_with_the_decorator() -> None:
    @register_expert_class("test_doubler", sample_input=lambda batch, hidden: torch.empty(batch, hidden))
    class Doubler(torch.nn.Module):
        def __init__(self, hidden_dim: int):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    assert get_expert_class("test_doubler").module_cls is Doubler
    with pytest.raises(ValueError, match="already registered"):
        register_expert_class("test_doubler", sample_input=lambda b, h: torch.empty(b, h))(torch.nn.Identity)
    with pytest.raises(ValueError, match="unknown expert class"):
        get_expert_class("no_such_expert")


def _backend(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> ExpertBackend:
    return ExpertBackend("ffn.0", module, optimizer, args_schema=[TensorSchema((4,))], max_batch_size=16)


def test_backend_forward_matches_the_module_and_backward_applies_the_same_optimizer_step() -> None:
    torch.manual_seed(0)
    local = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.GELU(), torch.nn.Linear(6, 4))
    hosted = copy.deepcopy(local)
    local_opt = torch.optim.Adam(local.parameters(), lr=0.01)
    backend = _backend(hosted, torch.optim.Adam(hosted.parameters(), lr=0.01))
    assert backend.outputs_schema == (TensorSchema((4,)),)
    for _ in range(3):
        x = torch.randn(5, 4)
        (out,) = backend.forward(x)
        x_local = x.clone().requires_grad_()
        y = local(x_local)
        torch.testing.assert_close(out, y.detach(), atol=1e-6, rtol=0)
        grad_y = torch.randn_like(y)
        (grad_x,) = backend.backward(x, grad_y)
        y.backward(grad_y)
        local_opt.step()
        local_opt.zero_grad()
        torch.testing.assert_close(grad_x, x_local.grad, atol=1e-6, rtol=0)
        for p_local, p_hosted in zip(local.parameters(), hosted.parameters(), strict=False):
            torch.testing.assert_close(p_local, p_hosted, atol=1e-6, rtol=0)
    assert backend.update_count == 3 and backend.examples_processed == 15


def test_backend_checks_inputs_against_its_schema() -> None:
    backend = _backend(torch.nn.Linear(4, 4), torch.optim.SGD(torch.nn.Linear(4, 4).parameters(), lr=0.1))
    assert backend.check_inputs([torch.zeros(3, 4)], backward=False) == 3
    for bad, message in [
        ([torch.zeros(3, 5)], "shape"),
        ([torch.zeros(3, 4, dtype=torch.float64)], "dtype"),
        ([torch.zeros(17, 4)], "batch size"),
        ([torch.zeros(3, 4), torch.zeros(3, 4)], "tensors"),
    ]:
        with pytest.raises(ExpertInputError, match=message):
            backend.check_inputs(bad, backward=False)
    with pytest.raises(ExpertInputError, match="disagree"):
        backend.check_inputs([torch.zeros(3, 4), torch.zeros(2, 4)], backward=True)


def _identity_pool(name: str, config: BatchingConfig, log: list[str] | None = None) -> TaskPool:
    def process(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if log is not None:
            log.append(name)
        return (x * 2,)

    return TaskPool(name, process, config)


async def _with_runtime(runtime: Runtime, body) -> None:
    runner = asyncio.get_running_loop().create_task(runtime.run())
    try:
        await body()
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


def test_concurrent_requests_are_batched_up_to_min_batch_size() -> None:
    pool = _identity_pool("p", BatchingConfig(min_batch_size=4, max_batch_size=8, batch_timeout=60))
    runtime = Runtime([pool])

    async def body() -> None:
        inputs = [torch.full((1, 2), float(i)) for i in range(4)]
        results = await asyncio.gather(*(pool.submit(x) for x in inputs))
        for x, (y,) in zip(inputs, results, strict=False):
            torch.testing.assert_close(y, x * 2)

    asyncio.run(_with_runtime(runtime, body))
    assert list(pool.stats.batch_sizes) == [4]
    assert pool.stats.examples == 4


def test_batches_never_exceed_max_batch_size_and_oversized_requests_are_refused() -> None:
    pool = _identity_pool("p", BatchingConfig(min_batch_size=1, max_batch_size=3, batch_timeout=0))
    runtime = Runtime([pool])

    async def body() -> None:
        await asyncio.gather(*(pool.submit(torch.ones(1, 2)) for _ in range(5)))
        with pytest.raises(ExpertInputError, match="batch size"):
            await pool.submit(torch.ones(4, 2))

    asyncio.run(_with_runtime(runtime, body))
    assert sorted(pool.stats.batch_sizes) == [2, 3]


def test_the_runtime_serves_the_oldest_waiting_batch_first() -> None:
    order: list[str] = []
    gate = threading.Event()
    config = BatchingConfig(min_batch_size=1, max_batch_size=8, batch_timeout=0)

    def blocked(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gate.wait(10)
        order.append("gate")
        return (x,)

    gate_pool = TaskPool("gate", blocked, config)
    first, second = _identity_pool("a", config, order), _identity_pool("b", config, order)
    runtime = Runtime([gate_pool, first, second])

    async def body() -> None:
        gate_task = asyncio.get_running_loop().create_task(gate_pool.submit(torch.ones(1, 1)))
        await asyncio.sleep(0.05)  # the gate batch is now running and blocks the worker
        b = asyncio.get_running_loop().create_task(second.submit(torch.ones(1, 1)))
        await asyncio.sleep(0)
        a = asyncio.get_running_loop().create_task(first.submit(torch.ones(1, 1)))
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(gate_task, a, b)

    asyncio.run(_with_runtime(runtime, body))
    assert order == ["gate", "b", "a"]


def test_a_failing_batch_fails_its_requests_and_the_runtime_keeps_serving() -> None:
    calls = []

    def flaky(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        calls.append(x.shape[0])
        if len(calls) == 1:
            raise RuntimeError("boom")
        return (x,)

    pool = TaskPool("flaky", flaky, BatchingConfig(batch_timeout=0))
    runtime = Runtime([pool])

    async def body() -> None:
        with pytest.raises(MoEError, match="boom"):
            await pool.submit(torch.ones(1, 1))
        (y,) = await pool.submit(torch.ones(2, 1))
        assert y.shape == (2, 1)

    asyncio.run(_with_runtime(runtime, body))
