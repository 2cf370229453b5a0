"""`peer.Optimizer`'s offloaded optimizer (a CPU master copy) and delayed step (in the background),
on a lone peer: the same trajectory, the documented staleness, consistent state and checkpoints."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import pytest
import torch

from peer import DHT
from peer.optim import LocalUpdates, Optimizer, OptimizerConfig, run_validators

BATCH = 16


@pytest.fixture(scope="module")
def dht() -> Iterator[DHT]:
    node = DHT(record_validators=[*run_validators("plain"), *run_validators("offloaded")])
    yield node
    node.shutdown()


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(256, 8, generator=generator)
    targets = inputs @ torch.randn(8, 1, generator=generator) + 0.5
    return inputs, targets


def _model(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(dtype)


def _optimizer(dht: DHT, run_id: str, model: torch.nn.Module, inner=None, **options) -> Optimizer:
    return Optimizer(
        dht=dht,
        run_id=run_id,
        params=model.parameters(),
        optimizer=inner or (lambda params: torch.optim.Adam(params, lr=0.02)),
        config=OptimizerConfig(target_batch_size=2 * BATCH, progress_period=0.05, **options),
        batch_size_per_step=BATCH,
    )


def _train(model: torch.nn.Module, optimizer: Optimizer, steps: int) -> list[float]:
    inputs, targets = _problem()
    losses = []
    for step in range(steps):
        rows = slice(step * BATCH % len(inputs), step * BATCH % len(inputs) + BATCH)
        dtype = model[0].weight.dtype
        loss = torch.nn.functional.mse_loss(model(inputs[rows].to(dtype)), targets[rows].to(dtype))
        loss.backward()
        optimizer.step(loss=loss.item())
        losses.append(loss.item())
    optimizer.wait()
    return losses


def _full_loss(model: torch.nn.Module) -> float:
    inputs, targets = _problem()
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(inputs), targets).item()


def _through_a_file(state: dict) -> dict:
    """What a checkpoint file gives back (torch.save, then a weights-only torch.load)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_an_offloaded_optimizer_follows_the_same_trajectory(dht: DHT) -> None:
    plain_model, offloaded_model = _model(), _model()
    plain = _optimizer(dht, "plain", plain_model)
    offloaded = _optimizer(dht, "offloaded", offloaded_model, offload_optimizer=True)
    try:
        _train(plain_model, plain, 24)
        _train(offloaded_model, offloaded, 24)
        assert plain.local_epoch == offloaded.local_epoch == 12
        for a, b in zip(plain_model.parameters(), offloaded_model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        # the inner optimizer works on CPU float32 masters, not on the model's tensors
        assert offloaded.master is not None
        for param, master in zip(offloaded_model.parameters(), offloaded.master.tensors, strict=True):
            assert master is not param and master.device.type == "cpu" and master.dtype == torch.float32
            assert torch.equal(master, param.detach())
        for state in offloaded.inner.state.values():
            assert all(value.device.type == "cpu" for value in state.values() if torch.is_tensor(value))
    finally:
        plain.shutdown()
        offloaded.shutdown()


def test_an_offloaded_low_precision_model_keeps_float32_masters(dht: DHT) -> None:
    model = _model(torch.bfloat16)
    initial = _full_loss(_model())
    optimizer = _optimizer(dht, "offloaded", model, offload_optimizer=True)
    try:
        _train(model, optimizer, 40)
        assert optimizer.master is not None
        for param, master in zip(model.parameters(), optimizer.master.tensors, strict=True):
            assert param.dtype == torch.bfloat16 and master.dtype == torch.float32
            assert torch.equal(param, master.to(torch.bfloat16))
        assert _full_loss(model.float()) < 0.3 * initial
    finally:
        optimizer.shutdown()


class _GatedSGD(torch.optim.SGD):
    """SGD whose steps, once `armed`, wait for `gate`: a background step we can hold open."""

    def __init__(self, params):
        super().__init__(params, lr=0.1)
        self.armed = False
        self.gate = threading.Event()
        self.entered = threading.Event()

    def step(self, closure=None):
        if self.armed:
            self.entered.set()
            assert self.gate.wait(60), "the test never opened the gate"
        return super().step(closure)


def test_a_delayed_step_never_writes_the_model_while_the_next_batch_runs(dht: DHT) -> None:
    model = _model()
    optimizer = _optimizer(dht, "plain", model, inner=_GatedSGD, delay_optimizer_step=True)
    inner = optimizer.inner
    assert isinstance(inner, _GatedSGD)
    inputs, targets = _problem()
    try:
        before = [p.detach().clone() for p in model.parameters()]
        inner.armed = True
        for _ in range(2):  # one epoch: its step starts in the background and blocks at the gate
            torch.nn.functional.mse_loss(model(inputs[:BATCH]), targets[:BATCH]).backward()
            ended = optimizer.step()
        assert ended and inner.entered.wait(30)
        # the caller computes the next batch meanwhile: the parameters are untouched and consistent
        loss = torch.nn.functional.mse_loss(model(inputs[BATCH:]), targets[BATCH:])
        loss.backward()
        for param, old in zip(model.parameters(), before, strict=True):
            assert torch.equal(param, old)
        assert optimizer.local_epoch == 0
        inner.gate.set()
        optimizer.wait()  # the next step() does this first
        assert optimizer.local_epoch == 1
        assert optimizer.master is not None
        for param, master, old in zip(model.parameters(), optimizer.master.tensors, before, strict=True):
            assert torch.equal(param, master) and not torch.equal(param, old)
        # the stale batch's gradients (computed before the update) count towards the next epoch
        assert not optimizer.step() and optimizer.local_samples == BATCH
    finally:
        inner.gate.set()
        optimizer.shutdown()


@pytest.mark.parametrize("offload", [False, True], ids=["delayed", "delayed+offloaded"])
def test_delayed_steps_converge_like_immediate_ones(dht: DHT, offload: bool) -> None:
    immediate_model, delayed_model = _model(), _model()
    immediate = _optimizer(dht, "plain", immediate_model)
    options = {"delay_optimizer_step": True, "offload_optimizer": offload}
    delayed = _optimizer(dht, "offloaded", delayed_model, **options)
    try:
        initial = _full_loss(immediate_model)
        _train(immediate_model, immediate, 80)
        _train(delayed_model, delayed, 80)
        assert delayed.local_epoch == immediate.local_epoch == 40
        # measured: 10.6 -> 0.47 immediate, 0.52 delayed (one-step-stale gradients cost a little)
        assert _full_loss(immediate_model) < 0.1 * initial
        assert _full_loss(delayed_model) < min(0.1 * initial, 1.5 * _full_loss(immediate_model))
        # consistent state: the model holds the masters, the inner optimizer stepped once per epoch
        assert delayed.master is not None
        for param, master in zip(delayed_model.parameters(), delayed.master.tensors, strict=True):
            assert torch.equal(param.detach(), master.to(param.device))
        steps = {int(state["step"]) for state in delayed.inner.state.values()}
        assert steps == {40}
    finally:
        immediate.shutdown()
        delayed.shutdown()


def test_checkpoints_move_between_modes_and_refuse_the_wrong_model(dht: DHT) -> None:
    source_model, target_model = _model(), _model()
    source = _optimizer(dht, "offloaded", source_model, offload_optimizer=True)
    target = _optimizer(dht, "plain", target_model)
    try:
        _train(source_model, source, 10)
        state = _through_a_file(source.state_dict())
        assert state["epoch"] == 5 and state["total_samples"] == 10 * BATCH
        target.load_state_dict(state)
        assert target.local_epoch == 5 and target.total_samples == 10 * BATCH
        for a, b in zip(source_model.parameters(), target_model.parameters(), strict=True):
            assert torch.equal(a, b)
        # both continue identically from there
        _train(source_model, source, 6)
        _train(target_model, target, 6)
        for a, b in zip(source_model.parameters(), target_model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        wrong = dict(state, params=[torch.zeros(3)] * len(state["params"]))
        before = [p.detach().clone() for p in target_model.parameters()]
        with pytest.raises(ValueError, match="cannot fill"):
            target.load_state_dict(wrong)
        for param, old in zip(target_model.parameters(), before, strict=True):
            assert torch.equal(param, old)  # nothing was written
    finally:
        source.shutdown()
        target.shutdown()


def test_a_local_updates_checkpoint_keeps_the_anchor_and_the_round_count(dht: DHT) -> None:
    model, restored_model = _model(), _model()
    optimizer = _optimizer(dht, "plain", model, local_updates=LocalUpdates(inner_steps=4))
    restored = _optimizer(dht, "offloaded", restored_model, local_updates=LocalUpdates(inner_steps=4))
    try:
        _train(model, optimizer, 6)  # one outer step, then 2 inner steps past the anchor
        optimizer.num_averaging_rounds = 3  # as if it had averaged (a lone peer never does)
        state = _through_a_file(optimizer.state_dict())
        assert state["epoch"] == 1 and state["averaging_rounds"] == 3
        restored.load_state_dict(state)
        assert restored.num_averaging_rounds == 3
        assert restored._anchor is not None and optimizer._anchor is not None
        for a, b in zip(restored._anchor, optimizer._anchor, strict=True):
            assert torch.equal(a, b)
        restored_params = list(restored_model.parameters())
        for a, b in zip(restored_params, model.parameters(), strict=True):
            assert torch.equal(a, b)
        assert any(not torch.equal(p, a) for p, a in zip(restored_params, restored._anchor, strict=True))
    finally:
        optimizer.shutdown()
        restored.shutdown()
