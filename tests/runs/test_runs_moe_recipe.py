"""The `moe-char-transformer` recipe: config validation, the expert grid, a model built without a
network, and training through a real expert server."""

from __future__ import annotations

import pytest
import torch

from peer.dht import DHT
from peer.moe import MoEError, RemoteMixtureOfExperts, Server, ServerConfig
from peer.moe.expert_uid import ExpertUID
from peer.runs import RecipeConfigError, get_recipe
from peer.runs.experts import build_expert_backends
from peer.runs.moe_char_transformer import MoECharTransformerRecipe
from peer.runs.recipes import ExpertSpec

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 2, "seq_len": 8, "grid": [2, 3], "k_best": 2}
CORPUS = b"the quick brown fox jumps over the lazy dog " * 10


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"grid": [2, 0]}, "grid"),
        ({"grid": []}, "grid"),
        ({"grid": [2, 2, 2, 2, 2]}, "grid"),
        ({"grid": [128, 64]}, "at most 4096"),
        ({"k_best": 7}, "k_best"),
        ({"k_min": 3}, "k_min"),
        ({"expert_prefix": "ffn.moe"}, "expert_prefix"),
        ({"expert_prefix": "3ffn"}, "expert_prefix"),
        ({"d_model": 18, "n_heads": 4}, "divisible"),
        ({"expert_lr": 0}, "expert_lr"),
        ({"forward_timeout": -1}, "forward_timeout"),
        ({"unknown_option": 1}, "unknown_option"),
    ],
)
def test_config_errors_name_the_problem(change: dict, field: str) -> None:
    with pytest.raises(RecipeConfigError, match=field):
        get_recipe("moe-char-transformer", {**SMALL, **change})


def test_expert_uids_are_the_whole_grid_of_every_layer() -> None:
    recipe = get_recipe("moe-char-transformer", {**SMALL, "expert_prefix": "moe_ffn"})
    uids = recipe.expert_uids()
    assert len(uids) == len(set(uids)) == 2 * 2 * 3
    parsed = [ExpertUID.parse(uid) for uid in uids]
    assert {p.prefix for p in parsed} == {"moe_ffn0", "moe_ffn1"}
    assert {p.coords for p in parsed if p.prefix == "moe_ffn1"} == {
        (a, b) for a in range(2) for b in range(3)
    }
    assert recipe.expert_spec() == ExpertSpec("ffn", 16, 1e-3)


def test_dense_recipes_have_no_experts() -> None:
    recipe = get_recipe("char-transformer", {"d_model": 16, "n_heads": 2, "n_layers": 1, "seq_len": 8})
    model = recipe.build_model()
    assert recipe.expert_uids() == [] and recipe.expert_spec() is None
    recipe.attach_swarm(model, object())  # type: ignore[arg-type]  # nothing to connect, nothing touched


def test_the_model_builds_without_a_network_and_holds_only_dense_parameters() -> None:
    recipe = get_recipe("moe-char-transformer", SMALL)
    torch.manual_seed(0)
    model = recipe.build_model()
    torch.manual_seed(0)
    again = recipe.build_model()
    mixtures = [m for m in model.modules() if isinstance(m, RemoteMixtureOfExperts)]
    assert len(mixtures) == 2 and all(m.dht is None for m in mixtures)
    names = list(model.state_dict())
    assert names == list(again.state_dict())  # the same tensors in the same order on every peer
    assert all(
        a.equal(b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    assert "blocks.0.experts.proj.weight" in names  # the gate is dense and averaged ...
    assert not any(".up." in name or ".down." in name for name in names)  # ... the experts are not
    inputs, targets = next(recipe.batches(CORPUS, 2, seed=0))
    with pytest.raises(MoEError, match="attach"):
        recipe.loss(model, (inputs, targets))
    with pytest.raises(TypeError, match="MoECharTransformer"):
        recipe.attach_swarm(torch.nn.Linear(2, 2), object())  # type: ignore[arg-type]


def test_the_model_trains_through_its_own_expert_server() -> None:
    recipe = get_recipe("moe-char-transformer", {**SMALL, "grid": [2, 2], "k_best": 2})
    assert isinstance(recipe, MoECharTransformerRecipe)
    dht = DHT()
    backends = build_expert_backends(recipe.expert_spec(), "unit", recipe.expert_uids(), ServerConfig())
    server = Server(backends, dht=dht)
    server.start()
    try:
        torch.manual_seed(0)
        model = recipe.build_model()
        recipe.attach_swarm(model, dht, server)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        batches = recipe.batches(CORPUS, 4, seed=0)
        losses = []
        for _ in range(12):
            loss = recipe.loss(model, next(batches))
            optimizer.zero_grad()
            loss.backward()
            assert model.blocks[0].experts.proj.weight.grad.abs().sum() > 0  # the gate learns
            assert model.embed.weight.grad.abs().sum() > 0  # gradients flow back through the experts
            optimizer.step()
            losses.append(loss.item())
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
        assert all(backend.update_count > 0 for backend in backends.values())  # trained on the server
    finally:
        server.shutdown()
        dht.shutdown()


def test_replicas_of_an_expert_start_equal() -> None:
    spec = ExpertSpec("ffn", 8)
    first = build_expert_backends(spec, "run-a", ["ffn0.0.0", "ffn0.0.1"], ServerConfig())
    state = torch.random.get_rng_state()
    again = build_expert_backends(spec, "run-a", ["ffn0.0.1"], ServerConfig())
    other_run = build_expert_backends(spec, "run-b", ["ffn0.0.1"], ServerConfig())
    assert torch.random.get_rng_state().equal(state)  # the global RNG is left alone
    same = first["ffn0.0.1"].module_state(), again["ffn0.0.1"].module_state()
    assert all(a.equal(b) for a, b in zip(same[0].values(), same[1].values(), strict=True))
    assert not first["ffn0.0.0"].module_state()["up.weight"].equal(same[0]["up.weight"])
    assert not other_run["ffn0.0.1"].module_state()["up.weight"].equal(same[0]["up.weight"])
