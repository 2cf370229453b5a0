"""Mixture-of-Experts runs through the join flow: which experts a peer hosts (pure), expert hosts on
a real DHT (spread, copied replicas, orphans taken over), and volunteers that host and train."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch

from peer.dht import DHT
from peer.moe.dht_declaration import get_expert_replicas
from peer.net.identity import Identity
from peer.runs import get_recipe
from peer.runs.experts import ExpertHost, HostingOptions, choose_experts, default_share, expert_seed
from peer.runs.join import JoinError, JoinOptions, Volunteer
from peer.utils.loop import run_coroutine

GRID = [f"ffn0.{a}.{b}" for a in range(2) for b in range(4)]
RECIPE = {"d_model": 32, "n_heads": 2, "n_layers": 1, "seq_len": 32, "grid": [2, 2], "k_best": 2}
CORPUS = b"".join(
    path.read_bytes() for path in sorted((Path(__file__).resolve().parents[2] / "docs").glob("*.md"))
)


def _peer_id():
    return Identity.generate().peer_id


# ---- choosing experts (pure) -----------------------------------------------------------------


def test_missing_experts_come_first_then_the_least_replicated() -> None:
    replicas = {uid: 2 for uid in GRID} | {"ffn0.0.3": 0, "ffn0.1.1": 1, "ffn0.1.2": 1}
    del replicas["ffn0.1.0"]  # nobody declares it
    chosen = choose_experts(GRID, replicas, 2, _peer_id())
    assert chosen == ["ffn0.0.3", "ffn0.1.0"]
    assert choose_experts(GRID, replicas, 4, _peer_id()) == ["ffn0.0.3", "ffn0.1.0", "ffn0.1.1", "ffn0.1.2"]
    assert choose_experts(GRID, replicas, 100, _peer_id()) == GRID  # at most the whole grid


def test_checkpointed_experts_win_ties_but_not_over_missing_ones() -> None:
    replicas = {uid: 1 for uid in GRID} | {"ffn0.1.3": 0}
    prefer = {"ffn0.0.2", "ffn0.1.1"}
    assert choose_experts(GRID, replicas, 3, _peer_id(), prefer) == ["ffn0.0.2", "ffn0.1.1", "ffn0.1.3"]


def test_ties_are_broken_per_peer_deterministically_so_peers_spread() -> None:
    peers = [_peer_id() for _ in range(8)]
    picks = [tuple(choose_experts(GRID, {}, 2, peer)) for peer in peers]
    assert picks == [tuple(choose_experts(GRID, {}, 2, peer)) for peer in peers]  # deterministic
    assert len(set(picks)) > 1  # 8 peers choosing 2 of 8 equal experts do not all agree
    assert len({uid for pick in picks for uid in pick}) >= 4


def test_choice_and_share_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="count"):
        choose_experts(GRID, {}, 0, _peer_id())
    with pytest.raises(ValueError, match="grid"):
        choose_experts(["a.0", "a.0"], {}, 1, _peer_id())
    assert [default_share(16, n) for n in (1, 2, 3, 16, 40)] == [16, 8, 6, 1, 1]
    with pytest.raises(ValueError, match="hosts"):
        default_share(16, 0)
    with pytest.raises(ValueError, match="num_experts"):
        HostingOptions(num_experts=0)
    assert expert_seed("run", "ffn0.0.1") == expert_seed("run", "ffn0.0.1") != expert_seed("run", "ffn0.0.2")


# ---- expert hosts on a real DHT ----------------------------------------------------------------


def test_hosts_spread_over_the_grid_copy_replicas_and_take_over_orphans(tmp_path: Path) -> None:
    recipe = get_recipe("moe-char-transformer", {**RECIPE, "expert_prefix": "hosted"})
    grid = recipe.expert_uids()
    dhts = [DHT()]
    dhts += [DHT(initial_peers=dhts[0].get_visible_maddrs()) for _ in range(3)]
    no_rebalance = HostingOptions(num_experts=2, rebalance_period=None)
    hosts = []
    try:
        first = ExpertHost(dhts[0], recipe, "spread", no_rebalance)
        hosts.append(first)
        assert len(first.start()) == 2
        for backend in first.server.backends.values():  # the first host's experts have trained
            backend.load_module_state({k: v + 1.0 for k, v in backend.module_state().items()})
        second = ExpertHost(dhts[1], recipe, "spread", HostingOptions(rebalance_period=None))
        hosts.append(second)
        assert len(second.start()) == 2  # an equal share: 4 experts, 2 hosts
        assert set(first.uids) | set(second.uids) == set(grid)  # missing experts first
        third = ExpertHost(dhts[2], recipe, "spread", HostingOptions(num_experts=4, rebalance_period=None))
        hosts.append(third)
        assert third.start() == grid
        for host in (first, second):  # a new replica starts from a live replica's parameters
            for uid in host.uids:
                mine = third.server.backends[uid].module_state()
                theirs = host.server.backends[uid].module_state()
                assert all(a.equal(b) for a, b in zip(mine.values(), theirs.values(), strict=True))
        replicas = get_expert_replicas(dhts[0], grid)
        assert all(len(replicas[uid]) == 2 for uid in grid)
        assert {e.peer_id for e in replicas[first.uids[0]]} == {
            d.peer_id.to_base58() for d in (dhts[0], dhts[2])
        }

        orphans = get_recipe("moe-char-transformer", {**RECIPE, "expert_prefix": "orphan"})
        lone = ExpertHost(dhts[3], orphans, "orphans", HostingOptions(num_experts=1, rebalance_period=None))
        hosts.append(lone)
        lone.start()
        assert len(lone.uids) == 1
        added = run_coroutine(lone.afill_missing())  # nobody else hosts the rest: take it all
        assert sorted(added + [u for u in lone.uids if u not in added]) == sorted(orphans.expert_uids())
        assert all(get_expert_replicas(dhts[1], orphans.expert_uids()).values())
        assert run_coroutine(lone.afill_missing()) == []
    finally:
        for host in hosts:
            host.shutdown()
        for dht in dhts:
            dht.shutdown()


def _distance(a: ExpertHost, b: ExpertHost, uid: str) -> float:
    mine, theirs = a.server.backends[uid].module_state(), b.server.backends[uid].module_state()
    return sum(float((x - y).abs().sum()) for x, y in zip(mine.values(), theirs.values(), strict=True))


def test_replicas_of_an_expert_are_pulled_together_and_a_poisoned_one_is_ignored() -> None:
    recipe = get_recipe("moe-char-transformer", {**RECIPE, "expert_prefix": "avg"})
    grid = recipe.expert_uids()
    dhts = [DHT()]
    dhts.append(DHT(initial_peers=dhts[0].get_visible_maddrs()))
    options = HostingOptions(num_experts=len(grid), rebalance_period=None, average_period=None)
    hosts = []
    try:
        first = ExpertHost(dhts[0], recipe, "avg", options)
        hosts.append(first)
        first.start()
        assert run_coroutine(first.aaverage_replicas()) == []  # no other replica: nothing to do
        second = ExpertHost(dhts[1], recipe, "avg", options)
        hosts.append(second)
        second.start()
        assert first.uids == second.uids == grid
        for backend in second.server.backends.values():  # the two replicas trained differently
            backend.load_module_state({k: v + 1.0 for k, v in backend.module_state().items()})
        before = {uid: _distance(first, second, uid) for uid in grid}
        assert all(d > 0 for d in before.values())

        assert run_coroutine(first.aaverage_replicas()) == grid  # halfway toward the other replica
        assert all(abs(_distance(first, second, uid) - before[uid] / 2) < 1e-3 * before[uid] for uid in grid)
        assert run_coroutine(second.aaverage_replicas()) == grid  # and the other pulls back
        assert all(abs(_distance(first, second, uid) - before[uid] / 4) < 1e-3 * before[uid] for uid in grid)

        poisoned = grid[0]
        backend = second.server.backends[poisoned]
        backend.load_module_state(
            {k: torch.full_like(v, float("nan")) for k, v in backend.module_state().items()}
        )
        kept = first.server.backends[poisoned].module_state()
        assert poisoned not in run_coroutine(first.aaverage_replicas())
        now = first.server.backends[poisoned].module_state()
        assert all(a.equal(b) for a, b in zip(kept.values(), now.values(), strict=True))
    finally:
        for host in hosts:
            host.shutdown()
        for dht in dhts:
            dht.shutdown()


def test_mixing_a_replica_state_checks_its_tensors() -> None:
    recipe = get_recipe("moe-char-transformer", {**RECIPE, "expert_prefix": "mix"})
    from peer.moe import ServerConfig
    from peer.runs.experts import build_expert_backends

    uid = recipe.expert_uids()[0]
    backend = build_expert_backends(recipe.expert_spec(), "mix", [uid], ServerConfig())[uid]
    state = backend.module_state()
    with pytest.raises(ValueError, match="weight"):
        backend.mix_module_state(state, 0.0)
    with pytest.raises(ValueError, match="other tensors"):
        backend.mix_module_state(dict(list(state.items())[1:]), 0.5)
    name = next(iter(state))
    with pytest.raises(ValueError, match="shape"):
        backend.mix_module_state({**state, name: torch.zeros(3)}, 0.5)
    target = {k: v + 2.0 for k, v in state.items()}
    assert backend.mix_module_state(target, 0.25) == len(state)
    assert all(torch.allclose(v, state[k] + 0.5) for k, v in backend.module_state().items())


# ---- volunteers -----------------------------------------------------------------------------------


def _manifest(tmp_path: Path, name: str, initial_peers: list[str], recipe: dict | None = None) -> str:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(CORPUS)
    document = {
        "slug": "moe-tiny",
        "protocol_version": 1,
        "recipe": recipe or {"name": "moe-char-transformer", "config": RECIPE},
        "dataset": {"url": str(corpus), "sha256": hashlib.sha256(CORPUS).hexdigest()},
        "target_batch_size": 64,
        "optimizer": {"lr": 0.003},
        "averaging": {"min_matchmaking_time": 0.5, "averaging_timeout": 1.5},
        "initial_peers": initial_peers,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(document))
    return str(path)


def _train(volunteer: Volunteer, losses: list[float], errors: list[BaseException]) -> None:
    try:
        volunteer.train(on_step=lambda status: losses.append(status.loss))
    except BaseException as e:  # reported by the test thread
        errors.append(e)


def test_two_volunteers_host_the_grid_train_and_a_no_experts_peer_uses_it(tmp_path: Path) -> None:
    alice = Volunteer(JoinOptions(_manifest(tmp_path, "a", []), data_dir=tmp_path / "alice", max_steps=20))
    volunteers = [alice]
    try:
        alice.prepare()
        assert alice.expert_host is not None and len(alice.expert_host.uids) == 4  # alone: the whole grid
        bob_manifest = _manifest(tmp_path, "b", [str(m) for m in alice.dht.get_visible_maddrs()])
        bob = Volunteer(JoinOptions(bob_manifest, data_dir=tmp_path / "bob", max_steps=20))
        volunteers.append(bob)
        bob.prepare()
        assert bob.expert_host is not None and len(bob.expert_host.uids) == 2  # an equal share of 2 hosts
        losses: list[list[float]] = [[], []]
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_train, args=(v, losses[i], errors)) for i, v in enumerate(volunteers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)
        assert not errors, errors
        for log in losses:
            assert len(log) == 20
            assert sum(log[-5:]) / 5 < sum(log[:5]) / 5 - 0.2  # the loss falls
        assert bob.expert_host.samples_served() > 0 and alice.expert_host.samples_served() > 0
        assert all(u.update_count > 0 for u in bob.expert_host.server.backends.values())  # trained there

        carol = Volunteer(
            JoinOptions(bob_manifest, data_dir=tmp_path / "carol", max_steps=3, no_experts=True)
        )
        volunteers.append(carol)
        carol.prepare()
        assert carol.expert_host is None
        carol.train()
        assert carol.status.local_steps == 3 and carol.status.hosted_experts == []
        replicas = get_expert_replicas(carol.dht, carol.recipe.expert_uids())
        assert carol.dht.peer_id.to_base58() not in {e.peer_id for es in replicas.values() for e in es}
    finally:
        for volunteer in reversed(volunteers):
            volunteer.shutdown()
    assert (tmp_path / "bob" / "experts" / bob.expert_host.uids[0] / "checkpoint.pt").exists()


def test_expert_flags_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        JoinOptions("run.json", no_experts=True, experts_only=True)
    with pytest.raises(ValueError, match="num_experts"):
        JoinOptions("run.json", no_experts=True, num_experts=2)
    dense = {"name": "char-transformer", "config": {"d_model": 16, "n_heads": 2, "n_layers": 1}}
    volunteer = Volunteer(
        JoinOptions(_manifest(tmp_path, "dense", [], dense), data_dir=tmp_path, experts_only=True)
    )
    with pytest.raises(JoinError, match="no experts to host"):
        volunteer.prepare()
    volunteer.shutdown()
    moe = _manifest(tmp_path, "moe", [])
    volunteer = Volunteer(JoinOptions(moe, data_dir=tmp_path, experts_only=True, client_mode=True))
    with pytest.raises(JoinError, match="client-mode"):
        volunteer.prepare()
    volunteer.shutdown()
