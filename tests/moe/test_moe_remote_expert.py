"""`RemoteExpert` over plain P2P: equivalence with a local module, batching, bad input, timeouts."""

from __future__ import annotations

import copy
import threading
import time

import pytest
import torch
from moe_helpers import HIDDEN, running_server, sgd_backend

from peer.errors import RPCCode
from peer.moe import BatchingConfig, ExpertBackend, RemoteExpert, ServerConfig, TensorSchema
from peer.moe.client.calls import acall_forward
from peer.moe.errors import ExpertCallError, ExpertInputError, ExpertTimeoutError
from peer.net.p2p import P2P
from peer.utils.loop import run_coroutine


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(HIDDEN, 16), torch.nn.Tanh(), torch.nn.Linear(16, HIDDEN))


def test_remote_expert_matches_a_local_copy_and_trains_the_server_like_the_local_optimizer() -> None:
    torch.manual_seed(0)
    local = _mlp()
    hosted = copy.deepcopy(local)
    backend = ExpertBackend(
        "ffn.0", hosted, torch.optim.Adam(hosted.parameters(), lr=0.01), args_schema=[TensorSchema((HIDDEN,))]
    )
    local_opt = torch.optim.Adam(local.parameters(), lr=0.01)
    with running_server({"ffn.0": backend}) as (server, client):
        expert = RemoteExpert("ffn.0", str(server.p2p.get_visible_maddrs()[0]), client, forward_timeout=10)
        assert expert.info.args_schema == (TensorSchema((HIDDEN,)),)
        assert expert.info.outputs_schema == (TensorSchema((HIDDEN,)),)
        for _ in range(2):
            x_remote = torch.randn(6, HIDDEN, requires_grad=True)
            x_local = x_remote.detach().clone().requires_grad_()
            y_remote, y_local = expert(x_remote), local(x_local)
            torch.testing.assert_close(y_remote, y_local, atol=1e-5, rtol=0)
            target = torch.randn(6, HIDDEN)
            ((y_remote - target) ** 2).mean().backward()
            ((y_local - target) ** 2).mean().backward()
            local_opt.step()
            local_opt.zero_grad()
            torch.testing.assert_close(x_remote.grad, x_local.grad, atol=1e-5, rtol=0)
            for p_local, p_hosted in zip(local.parameters(), hosted.parameters(), strict=False):
                torch.testing.assert_close(p_hosted, p_local, atol=1e-6, rtol=0)
    assert backend.update_count == 2


def test_backward_runs_even_when_inputs_need_no_gradient() -> None:
    torch.manual_seed(1)
    module = _mlp()
    before = [p.detach().clone() for p in module.parameters()]
    with running_server({"ffn.0": sgd_backend("ffn.0", module)}) as (server, client):
        expert = RemoteExpert("ffn.0", str(server.p2p.get_visible_maddrs()[0]), client)
        expert(torch.randn(3, HIDDEN)).pow(2).sum().backward()
    assert any(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=False))


def test_concurrent_clients_are_batched_together_by_the_server() -> None:
    clients = 3
    config = ServerConfig(
        batching=BatchingConfig(min_batch_size=clients, max_batch_size=64, batch_timeout=30)
    )
    with running_server({"ffn.0": sgd_backend("ffn.0", _mlp())}, config) as (server, _):
        maddr = str(server.p2p.get_visible_maddrs()[0])
        peers = [P2P.create(host_maddrs=[]) for _ in range(clients)]
        try:
            outputs: list[torch.Tensor] = []

            def call(p2p: P2P) -> None:
                outputs.append(RemoteExpert("ffn.0", maddr, p2p, forward_timeout=20)(torch.randn(1, HIDDEN)))

            threads = [threading.Thread(target=call, args=(p,)) for p in peers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert len(outputs) == clients
        finally:
            for p2p in peers:
                p2p.shutdown()
        assert list(server.stats["ffn.0_forward"].batch_sizes) == [clients]


def _raw_forward(client: P2P, maddr: str, uid: str, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return run_coroutine(acall_forward(client, maddr, uid, tensors, timeout=10))


def test_bad_input_is_refused_with_a_clear_error_and_the_server_keeps_serving() -> None:
    with running_server({"ffn.0": sgd_backend("ffn.0", _mlp(), max_batch_size=64)}) as (server, client):
        maddr = str(server.p2p.get_visible_maddrs()[0])
        cases = [
            ([torch.randn(2, HIDDEN + 1)], "shape"),
            ([torch.randn(2, HIDDEN, dtype=torch.float64)], "dtype"),
            ([torch.randn(HIDDEN)], "shape"),
            ([torch.randn(2, HIDDEN), torch.randn(2, HIDDEN)], "takes 1 tensors"),
            ([torch.randn(200_000, HIDDEN)], "exceeds 64"),  # refused from its header, before the payload
        ]
        for tensors, message in cases:
            with pytest.raises(ExpertInputError, match=message):
                _raw_forward(client, maddr, "ffn.0", tensors)
        with pytest.raises(ExpertCallError, match="does not serve") as caught:
            _raw_forward(client, maddr, "ffn.9", [torch.randn(2, HIDDEN)])
        assert caught.value.code == RPCCode.NOT_FOUND
        (y,) = _raw_forward(client, maddr, "ffn.0", [torch.randn(2, HIDDEN)])
        assert y.shape == (2, HIDDEN)
        # the client checks its inputs too, before sending anything
        expert = RemoteExpert("ffn.0", maddr, client)
        with pytest.raises(ExpertInputError, match="shape"):
            expert(torch.randn(2, 3))
        assert server.stats["ffn.0_forward"].examples == 2


class _Slow(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(1.0)
        return self.linear(x)


def test_a_slow_expert_gives_a_clear_timeout() -> None:
    backend = ExpertBackend(
        "slow.0",
        _Slow(),
        None,
        args_schema=[TensorSchema((HIDDEN,))],
        outputs_schema=[TensorSchema((HIDDEN,))],
    )
    with running_server({"slow.0": backend}) as (server, client):
        expert = RemoteExpert("slow.0", str(server.p2p.get_visible_maddrs()[0]), client, forward_timeout=0.3)
        expert.info  # noqa: B018 - fetch the schemas first: the info call is fast
        with pytest.raises(ExpertTimeoutError, match=r"slow\.0.*DEADLINE_EXCEEDED") as caught:
            expert(torch.randn(1, HIDDEN))
        assert isinstance(caught.value, TimeoutError)


def test_an_unreachable_expert_gives_a_call_error() -> None:
    client = P2P.create(host_maddrs=[])
    dead = P2P.create()
    maddr = str(dead.get_visible_maddrs()[0])
    dead.shutdown()
    try:
        with pytest.raises(ExpertCallError) as caught:
            RemoteExpert("ffn.0", maddr, client, forward_timeout=5).info  # noqa: B018
        assert caught.value.code == RPCCode.UNAVAILABLE
    finally:
        client.shutdown()
