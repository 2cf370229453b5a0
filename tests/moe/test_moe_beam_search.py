"""The search for the best declared experts: exact against brute force, pure and through a real DHT."""

from __future__ import annotations

import itertools
import random

import pytest

from peer.dht import DHT
from peer.dht.node import get_dht_time
from peer.moe.beam_search import ExpertBeamSearch, ExpertEntry, brute_force_top_k
from peer.moe.dht_declaration import declaration_records, declare_experts, find_best_experts, get_experts
from peer.moe.expert_uid import ExpertUID
from peer.net.identity import Identity

PEERS = [Identity.generate().peer_id.to_base58() for _ in range(3)]


def _random_grid(
    rng: random.Random, sizes: tuple[int, ...], density: float
) -> dict[tuple[int, ...], ExpertEntry]:
    declared = {}
    for coords in itertools.product(*(range(s) for s in sizes)):
        if rng.random() < density:
            declared[coords] = ExpertEntry(str(ExpertUID("ffn", coords)), PEERS[rng.randrange(3)])
    return declared


def _dictionaries(declared: dict[tuple[int, ...], ExpertEntry]) -> dict[str, dict[int, ExpertEntry]]:
    """What the DHT would hold under each grid prefix, built from the declaration records."""
    tables: dict[str, dict[int, ExpertEntry]] = {}
    for entry in declared.values():
        for (key, subkey), value in declaration_records([entry.uid], entry.peer_id, []).items():
            if isinstance(subkey, int):  # a grid prefix's coordinate (not an expert's replica)
                tables.setdefault(key, {})[subkey] = ExpertEntry(value[0], value[1])
    return tables


def _run(search: ExpertBeamSearch, tables: dict[str, dict[int, ExpertEntry]]) -> int:
    fetched = 0
    while not search.done:
        keys = search.next_prefixes()
        assert keys, "a search that is not done must ask for something"
        for key in keys:
            fetched += 1
            search.on_prefix(key, tables.get(key))
    return fetched


@pytest.mark.parametrize("seed", range(60))
def test_search_returns_the_exact_top_k_among_declared_experts(seed: int) -> None:
    rng = random.Random(seed)
    sizes = tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 3)))
    declared = _random_grid(rng, sizes, density=rng.choice([0.1, 0.4, 1.0]))
    scores = [[rng.gauss(0, 1) for _ in range(size)] for size in sizes]
    k_best = rng.randint(1, 6)
    search = ExpertBeamSearch("ffn", scores, k_best, beam_size=rng.randint(0, 4))
    _run(search, _dictionaries(declared))
    expected = brute_force_top_k(scores, declared, k_best)
    assert [e.uid for e, _ in search.result] == [e.uid for e, _ in expected]
    for (_, got), (_, want) in zip(search.result, expected, strict=False):
        assert got == pytest.approx(want)


def test_search_prunes_prefixes_that_cannot_win() -> None:
    declared = {
        c: ExpertEntry(str(ExpertUID("ffn", c)), PEERS[0]) for c in itertools.product(range(8), range(8))
    }
    scores = [[float(i) for i in range(8)], [float(i) for i in range(8)]]
    search = ExpertBeamSearch("ffn", scores, k_best=1)
    fetched = _run(search, _dictionaries(declared))
    assert [e.uid for e, _ in search.result] == ["ffn.7.7"]
    assert fetched == 2  # the root and ffn.7., nothing else


def test_search_ignores_coordinates_outside_the_grid_and_bad_arguments() -> None:
    tables = {"ffn.": {0: ExpertEntry("ffn.0", "p"), 5: ExpertEntry("ffn.5", "p")}}
    search = ExpertBeamSearch("ffn", [[0.0, 1.0]], k_best=3)
    _run(search, tables)
    assert [e.uid for e, _ in search.result] == ["ffn.0"]
    with pytest.raises(ValueError):
        ExpertBeamSearch("ffn", [[0.0]], k_best=0)
    with pytest.raises(ValueError):
        ExpertBeamSearch("ffn", [[float("nan")]], k_best=1)
    with pytest.raises(ValueError, match="not requested"):
        ExpertBeamSearch("ffn", [[0.0]], k_best=1).on_prefix("ffn.3.", {})


def test_search_through_the_dht_matches_brute_force() -> None:
    rng = random.Random(7)
    sizes = (5, 6)
    declared = _random_grid(rng, sizes, density=0.5)
    first = DHT()
    second = DHT(initial_peers=first.get_visible_maddrs())
    try:
        stored = declare_experts(second, [e.uid for e in declared.values()], get_dht_time() + 60, maddrs=[])
        assert all(stored.values())
        samples = [[[rng.gauss(0, 1) for _ in range(s)] for s in sizes] for _ in range(4)]
        results = find_best_experts(first, "ffn", samples, k_best=4)
        for scores, result in zip(samples, results, strict=False):
            expected = brute_force_top_k(scores, declared, 4)
            assert [e.uid for e, _ in result] == [e.uid for e, _ in expected]
            assert all(e.peer_id == second.peer_id.to_base58() for e, _ in result)
        some_uid = next(iter(declared.values())).uid
        found = get_experts(first, [some_uid, "ffn.99.99"])
        assert found[0] is not None and found[0].uid == some_uid and found[1] is None
    finally:
        second.shutdown()
        first.shutdown()
