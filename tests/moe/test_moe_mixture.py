"""`RemoteMixtureOfExperts` and `RemoteSwitchMixtureOfExperts` over a real DHT and expert servers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from peer.dht import DHT
from peer.moe import (
    ExpertBackend,
    MoEConfig,
    NotEnoughExpertsError,
    RemoteMixtureOfExperts,
    RemoteSwitchMixtureOfExperts,
    Server,
)
from peer.moe.server import make_backends

HIDDEN = 16


def _adam(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=3e-3)


@contextlib.contextmanager
def swarm(expert_groups: list[list[str]]) -> Iterator[tuple[DHT, list[Server]]]:
    """A client DHT plus one DHT peer + expert server per group of uids."""
    client = DHT()
    servers: list[Server] = []
    try:
        for uids in expert_groups:
            dht = DHT(initial_peers=client.get_visible_maddrs())
            server = Server(_backends(uids), dht=dht, owns_network=True)
            server.start()
            servers.append(server)
        yield client, servers
    finally:
        for server in servers:
            server.shutdown()
        client.shutdown()


def _backends(uids: list[str]) -> dict[str, ExpertBackend]:
    return make_backends(uids, expert_cls="ffn", hidden_dim=HIDDEN, optimizer=_adam)


def test_training_continues_and_loss_keeps_falling_after_30_percent_of_experts_die() -> None:
    torch.manual_seed(0)
    groups = [
        [f"expert.0.{i}" for i in range(3)],
        [f"expert.0.{i}" for i in range(3, 5)] + ["expert.1.0", "expert.1.1"],
        [f"expert.1.{i}" for i in range(2, 5)],
    ]
    teacher = torch.nn.Sequential(torch.nn.Linear(HIDDEN, 32), torch.nn.Tanh(), torch.nn.Linear(32, HIDDEN))
    data = [torch.randn(32, HIDDEN) for _ in range(8)]
    targets = [teacher(x).detach() for x in data]
    with swarm(groups) as (client, servers):
        moe = RemoteMixtureOfExperts(
            in_features=HIDDEN,
            grid_size=(2, 5),
            dht=client,
            uid_prefix="expert",
            k_best=4,
            k_min=1,
            config=MoEConfig(forward_timeout=10, backward_timeout=10, timeout_after_k_min=5),
        )
        head = torch.nn.Linear(HIDDEN, HIDDEN)
        opt = torch.optim.Adam([*moe.parameters(), *head.parameters()], lr=3e-3)
        losses: list[float] = []

        def step(i: int) -> torch.Tensor:
            x, y = data[i % len(data)], targets[i % len(data)]
            out, mask = moe(x)
            loss = torch.nn.functional.mse_loss(head(out), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            return mask

        for i in range(24):
            assert bool(step(i).all())  # everyone answers while all servers live
        servers[2].shutdown()  # 3 of the 10 experts die mid-training; their declarations linger
        masks = [step(i) for i in range(24, 64)]
        assert not all(bool(m.all()) for m in masks)  # dead experts were chosen, and masked out
        assert all(bool(m.any(dim=1).all()) for m in masks)  # every sample still got an answer
        before, early, late = losses[:8], losses[24:32], losses[-8:]
        assert sum(late) / 8 < sum(early) / 8 < sum(before) / 8

        strict = RemoteMixtureOfExperts(
            in_features=HIDDEN,
            grid_size=(2, 5),
            dht=client,
            uid_prefix="expert",
            k_best=4,
            k_min=4,
            config=MoEConfig(forward_timeout=10),
        )
        with pytest.raises(NotEnoughExpertsError, match="needs 4"):
            strict(torch.randn(32, HIDDEN))


def test_switch_routes_top_1_and_passes_the_input_through_when_no_expert_answers() -> None:
    torch.manual_seed(1)
    with swarm([[f"sw.{i}" for i in range(4)]]) as (client, servers):
        switch = RemoteSwitchMixtureOfExperts(
            in_features=HIDDEN,
            grid_size=(4,),
            dht=client,
            uid_prefix="sw",
            config=MoEConfig(forward_timeout=10),
        )
        x = torch.randn(16, HIDDEN, requires_grad=True)
        out, balancing_loss = switch(x)
        assert out.shape == x.shape and not torch.allclose(out, x)
        (out.sum() + balancing_loss).backward()
        assert x.grad is not None and switch.proj.weight.grad is not None
        assert balancing_loss.item() > 0
        utilization = switch.utilization_0
        assert utilization.sum().item() == pytest.approx(1.0)

        servers[0].shutdown()
        x = torch.randn(8, HIDDEN, requires_grad=True)
        out, balancing_loss = switch(x)
        torch.testing.assert_close(out, x)
        out.sum().backward()
        torch.testing.assert_close(x.grad, torch.ones_like(x))
        assert torch.isfinite(balancing_loss)
