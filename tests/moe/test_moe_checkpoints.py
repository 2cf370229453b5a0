"""Server checkpoints: saved on shutdown (and periodically), restored on start."""

from __future__ import annotations

import torch
from moe_helpers import HIDDEN, ffn_backends, running_server

from peer.moe import RemoteExpert, ServerConfig
from peer.moe.checkpoints import checkpoint_path, load_checkpoints


def test_a_restarted_server_resumes_weights_and_optimizer_state(tmp_path) -> None:
    config = ServerConfig(checkpoint_dir=tmp_path)
    torch.manual_seed(0)
    first = ffn_backends("ffn.[0:2]")
    with running_server(first, config) as (server, client):
        expert = RemoteExpert("ffn.1", str(server.p2p.get_visible_maddrs()[0]), client)
        for _ in range(2):
            expert(torch.randn(4, HIDDEN)).pow(2).mean().backward()
    assert checkpoint_path(tmp_path, "ffn.0").exists() and checkpoint_path(tmp_path, "ffn.1").exists()
    trained = first["ffn.1"].state_dict()
    assert trained["update_count"] == 2 and trained["optimizer"]["state"]

    torch.manual_seed(1)  # fresh experts start from other weights
    second = ffn_backends("ffn.[0:2]")
    assert not torch.equal(second["ffn.1"].expert.up.weight, first["ffn.1"].expert.up.weight)
    with running_server(second, config) as (server, client):
        restored = second["ffn.1"].state_dict()
        for name, value in trained["model"].items():
            torch.testing.assert_close(restored["model"][name], value, atol=0, rtol=0)
        for key, state in trained["optimizer"]["state"].items():
            for name, value in state.items():
                torch.testing.assert_close(restored["optimizer"]["state"][key][name], value, atol=0, rtol=0)
        assert restored["update_count"] == 2
        # and it keeps training from there: same next step as the first server would have taken
        x = torch.randn(4, HIDDEN)
        expert = RemoteExpert("ffn.1", str(server.p2p.get_visible_maddrs()[0]), client)
        expert(x).sum().backward()
    first["ffn.1"].backward(x, torch.ones(4, HIDDEN))
    torch.testing.assert_close(
        second["ffn.1"].expert.up.weight, first["ffn.1"].expert.up.weight, atol=1e-6, rtol=0
    )


def test_loading_skips_experts_without_a_checkpoint(tmp_path) -> None:
    assert load_checkpoints(ffn_backends("ffn.[0:2]"), tmp_path) == []
