"""The Moshpit grid: group keys (pure), convergence in the in-memory model, and 16 real peers."""

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


def test_random_groups_on_a_non_square_count_converge():
    grid = MoshpitGrid((3, 3))
    rng = random.Random(1)
    values = [rng.random() for _ in range(23)]
    mean = statistics.fmean(values)
    coords = [grid.random_coords(rng) for _ in values]
    spread = max(values) - min(values)
    for r in range(8):
        simulate_round(grid, values, coords, r, target_group_size=3, rng=rng)
        new_spread = max(values) - min(values)
        assert new_spread < spread or new_spread < 1e-12
        spread = new_spread
        assert abs(statistics.fmean(values) - mean) < 0.2  # groups average exactly; unequal sizes drift a bit


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
