"""The Moshpit grid: group keys (pure), the in-memory model, and convergence of networked peers."""

from __future__ import annotations

import random
import statistics

import pytest
import torch
from averaging_helpers import close_all, make_swarm, step_all

from peer.averaging import AveragingConfig, DecentralizedAverager, MoshpitGrid, split_part_sizes
from peer.averaging.grid import simulate_round


def test_group_keys_name_every_coordinate_but_the_rounds_dimension():
    grid = MoshpitGrid((4, 4))
    assert grid.group_key("p", (1, 2), 0) == "p.d0.2"
    assert grid.group_key("p", (1, 2), 1) == "p.d1.1"
    assert grid.next_coords((1, 2), 0, rank_in_group=3) == (3, 2)
    assert MoshpitGrid().group_key("p", (0,), 5) == "p.d0"
    with pytest.raises(ValueError, match="coords"):
        grid.check_coords((4, 0))
    with pytest.raises(ValueError, match="grid_size"):
        MoshpitGrid((0,))


def test_part_sizes_follow_bandwidth_and_skip_clients():
    assert split_part_sizes(10, [1, 1, 1], [False, False, True]) == [5, 5, 0]
    assert split_part_sizes(10, [1, 3], [False, False]) == [3, 7]
    assert sum(split_part_sizes(1001, [1, 2, 3], [False] * 3)) == 1001
    with pytest.raises(ValueError, match="client_modes"):
        split_part_sizes(10, [1], [True])


def test_full_grid_is_exact_after_d_rounds_in_the_model():
    grid = MoshpitGrid((4, 4, 4))
    rng = random.Random(0)
    values = [rng.random() for _ in range(64)]
    mean = statistics.fmean(values)
    coords = [(i // 16, (i // 4) % 4, i % 4) for i in range(64)]
    for r in range(3):
        simulate_round(grid, values, coords, r, target_group_size=4, rng=rng)
    assert max(abs(v - mean) for v in values) < 1e-12


def _value(averager: DecentralizedAverager) -> float:
    with averager.get_tensors() as (tensor,):
        return tensor.item()


def test_random_groups_on_a_non_square_count_converge():
    """10 networked peers (not M**d) on a 3x3 grid, cells dealt at random: one line holds 4 peers, so
    groups are uneven and no number of rounds is exact, yet every round mixes members of different
    earlier groups: the spread shrinks every round and the global mean is kept."""
    peers, rounds = 10, 4
    dhts = make_swarm(peers)
    rng = random.Random(3)
    cells = [(i % 3, i // 3 % 3) for i in range(peers)]  # 4 peers in one line, 3 in the others
    rng.shuffle(cells)
    values = [rng.uniform(-1, 1) for _ in range(peers)]
    mean = statistics.fmean(values)
    averagers = [
        DecentralizedAverager(
            [torch.tensor([values[i]], dtype=torch.float64)],
            dht,
            prefix="random_groups",
            target_group_size=4,
            min_matchmaking_time=2.0,
            config=AveragingConfig(grid_size=(3, 3), grid_coords=cells[i]),
        )
        for i, dht in enumerate(dhts)
    ]
    try:
        spread = max(values) - min(values)
        for r in range(rounds):
            results = step_all(averagers, timeout=30.0)
            assert all(result is not None for result in results), f"round {r}: a peer found no group"
            now = [_value(averager) for averager in averagers]
            assert max(now) - min(now) < spread, f"round {r}: the spread did not shrink"
            spread = max(now) - min(now)
            assert abs(statistics.fmean(now) - mean) < 1e-12  # a group's sum never changes
        assert spread < 0.05 * (max(values) - min(values))
    finally:
        close_all(averagers, dhts)


def test_sixteen_peers_on_a_4x4_grid_reach_the_global_mean_in_two_rounds():
    dhts = make_swarm(16)
    torch.manual_seed(0)
    values = [torch.randn(8) for _ in range(16)]
    mean = torch.stack(values).mean(0)
    averagers = [
        DecentralizedAverager(
            [values[i].clone()],
            dht,
            prefix="moshpit",
            min_matchmaking_time=3.0,
            config=AveragingConfig(grid_size=(4, 4), grid_coords=(i // 4, i % 4)),
        )
        for i, dht in enumerate(dhts)
    ]
    try:
        for _ in range(2):
            results = step_all(averagers, timeout=20.0)
            assert all(result is not None and len(result) == 4 for result in results)
        for averager in averagers:
            with averager.get_tensors() as (tensor,):
                torch.testing.assert_close(tensor, mean, atol=1e-5, rtol=0)
    finally:
        close_all(averagers, dhts)


def test_a_round_without_a_group_still_moves_to_the_next_dimension():
    dhts = make_swarm(1)
    averager = DecentralizedAverager(
        [torch.zeros(3)],
        dhts[0],
        prefix="alone",
        min_matchmaking_time=0.3,
        config=AveragingConfig(grid_size=(2, 2), grid_coords=(1, 0)),
    )
    try:
        assert averager.step(timeout=0.6) is None
        assert (averager.round_index, averager.completed_rounds) == (1, 0)
        assert averager.grid_coords == (1, 0)  # no group, no rank: the cell stays
    finally:
        close_all([averager], dhts)
