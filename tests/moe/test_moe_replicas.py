"""Replicated experts: replica counts in the DHT, parameters for a new replica (`moe.params/1`),
in-process calls to this peer's own server, experts added to a running server."""

from __future__ import annotations

import pytest
import torch
from moe_helpers import HIDDEN, ffn_backends, running_server

from peer.dht import DHT, get_dht_time
from peer.errors import RPCCode
from peer.moe import MoEConfig, MoEError, RemoteMixtureOfExperts, Server, get_expert_replicas, get_experts
from peer.moe.client.calls import acall_backward, acall_forward, acall_params
from peer.moe.dht_declaration import declare_experts
from peer.moe.errors import ExpertCallError
from peer.moe.server import make_backends
from peer.utils.loop import run_coroutine


def _address(server: Server) -> str:
    return str(server.p2p.get_visible_maddrs()[0])


def test_every_server_of_an_expert_counts_as_a_replica() -> None:
    first = DHT()
    second = DHT(initial_peers=first.get_visible_maddrs())
    try:
        expiration = get_dht_time() + 60
        assert all(declare_experts(first, ["rep.0.0", "rep.0.1"], expiration, maddrs=[]).values())
        assert all(declare_experts(second, ["rep.0.1"], expiration + 1, maddrs=[]).values())
        replicas = get_expert_replicas(first, ["rep.0.0", "rep.0.1", "rep.1.0"])
        assert [e.peer_id for e in replicas["rep.0.0"]] == [first.peer_id.to_base58()]
        # most recently refreshed first: the second server declared with the later expiration
        assert [e.peer_id for e in replicas["rep.0.1"]] == [d.peer_id.to_base58() for d in (second, first)]
        assert replicas["rep.1.0"] == []
        found = get_experts(second, ["rep.0.1", "rep.1.0"])
        assert found[0] is not None and found[0].peer_id == second.peer_id.to_base58() and found[1] is None
    finally:
        second.shutdown()
        first.shutdown()


def test_a_new_replica_downloads_the_parameters_and_mismatches_are_refused() -> None:
    backends = ffn_backends("ffn.[0:2]")
    with running_server(backends) as (server, client):
        state = backends["ffn.1"].module_state()
        templates = [torch.zeros_like(t) for t in state.values()]
        got = run_coroutine(acall_params(client, _address(server), "ffn.1", templates, timeout=10))
        assert all(a.equal(b) for a, b in zip(got, state.values(), strict=True))
        wrong = [torch.zeros(3), *templates[1:]]
        with pytest.raises(ExpertCallError, match="expected float32"):
            run_coroutine(acall_params(client, _address(server), "ffn.1", wrong, timeout=10))
        with pytest.raises(ExpertCallError, match="expected 3"):
            run_coroutine(acall_params(client, _address(server), "ffn.1", templates[:3], timeout=10))
        with pytest.raises(ExpertCallError) as unknown:
            run_coroutine(acall_params(client, _address(server), "ffn.9", templates, timeout=10))
        assert unknown.value.code == RPCCode.NOT_FOUND


def test_local_calls_match_remote_calls_and_check_their_inputs() -> None:
    torch.manual_seed(0)
    backends = ffn_backends("ffn.[0:1]")
    with running_server(backends) as (server, client):
        x = torch.randn(5, HIDDEN)
        local = run_coroutine(server.acall_local("ffn.0", (x,)))
        remote = run_coroutine(acall_forward(client, _address(server), "ffn.0", (x,), timeout=10))
        torch.testing.assert_close(local[0], remote[0])
        grads = run_coroutine(server.acall_local("ffn.0", (x, torch.ones(5, HIDDEN)), backward=True))
        assert grads[0].shape == x.shape and backends["ffn.0"].update_count == 1
        with pytest.raises(MoEError, match="shape"):
            run_coroutine(server.acall_local("ffn.0", (torch.randn(5, HIDDEN + 1),)))
        with pytest.raises(ExpertCallError) as unknown:
            run_coroutine(server.acall_local("ffn.7", (x,)))
        assert unknown.value.code == RPCCode.NOT_FOUND
        run_coroutine(
            acall_backward(client, _address(server), "ffn.0", (x, torch.ones(5, HIDDEN)), timeout=10)
        )
        assert backends["ffn.0"].update_count == 2


def test_a_mixture_without_a_dht_waits_to_be_attached_and_calls_its_own_server_in_process() -> None:
    dht = DHT()
    server = Server(make_backends(["own.0.0", "own.0.1"], hidden_dim=HIDDEN), dht=dht)
    server.start()
    try:
        moe = RemoteMixtureOfExperts(
            in_features=HIDDEN,
            grid_size=(1, 2),
            dht=None,
            uid_prefix="own",
            k_best=2,
            config=MoEConfig(forward_timeout=10, backward_timeout=10),
        )
        x = torch.randn(4, HIDDEN, requires_grad=True)
        with pytest.raises(MoEError, match="attach"):
            moe(x)
        moe.attach(dht)  # without the local server: a peer cannot dial itself
        with pytest.raises(MoEError, match="expert answers"):
            moe(x)
        moe.attach(dht, local_server=server)
        output, mask = moe(x)
        assert bool(mask.all())
        output.sum().backward()
        assert x.grad is not None and all(b.update_count == 1 for b in server.backends.values())
    finally:
        server.shutdown()
        dht.shutdown()


def test_experts_added_to_a_running_server_are_served_and_declared(tmp_path) -> None:
    dht = DHT()
    reader = DHT(initial_peers=dht.get_visible_maddrs())
    server = Server(make_backends(["add.0"], hidden_dim=HIDDEN), dht=dht)
    server.start()
    try:
        assert server.add_experts(make_backends(["add.0", "add.1"], hidden_dim=HIDDEN)) == ["add.1"]
        assert sorted(server.backends) == ["add.0", "add.1"]
        replicas = get_expert_replicas(reader, ["add.1"])
        assert [e.peer_id for e in replicas["add.1"]] == [dht.peer_id.to_base58()]
        out = run_coroutine(
            acall_forward(reader.p2p, dht.peer_id, "add.1", (torch.randn(2, HIDDEN),), timeout=10)
        )
        assert out[0].shape == (2, HIDDEN)
    finally:
        server.shutdown()
        reader.shutdown()
        dht.shutdown()
