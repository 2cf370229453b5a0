"""DecentralizedAverager on a DHT swarm: matchmaking, exact means, gather, schemas, state sharing."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from averaging_helpers import close_all, make_swarm, step_all

from peer.averaging import AveragingConfig, DecentralizedAverager


@pytest.mark.parametrize("num_clients", [0, 1, 2])
def test_step_gives_every_peer_the_exact_mean_and_gathers(num_clients):
    dhts = make_swarm(4)
    torch.manual_seed(num_clients)
    values = [[torch.randn(3, 50), torch.randn(17)] for _ in range(4)]
    expected = [torch.stack([v[j] for v in values]).mean(0) for j in range(2)]
    averagers = [
        DecentralizedAverager(
            [t.clone() for t in values[i]],
            dht,
            prefix="grads",
            min_matchmaking_time=2.0,
            client_mode=i >= 4 - num_clients,
            config=AveragingConfig(chunk_size=64),
        )
        for i, dht in enumerate(dhts)
    ]
    try:
        results = step_all(averagers, gathers=[{"rank": i} for i in range(4)])
        ids = {str(dht.peer_id): i for i, dht in enumerate(dhts)}
        for averager, result in zip(averagers, results, strict=True):
            assert result == {peer_id: {"rank": i} for peer_id, i in ids.items()}
            with averager.get_tensors() as tensors:
                for tensor, mean in zip(tensors, expected, strict=True):
                    torch.testing.assert_close(tensor, mean, atol=1e-6, rtol=0)
    finally:
        close_all(averagers, dhts)


def test_weighted_step_is_exact():
    dhts = make_swarm(3)
    averagers = [
        DecentralizedAverager(
            [torch.full((100,), float(i))], dht, prefix="w", min_matchmaking_time=2.0, target_group_size=3
        )
        for i, dht in enumerate(dhts)
    ]
    try:
        step_all(averagers, weights=[1.0, 2.0, 5.0])
        for averager in averagers:
            with averager.get_tensors() as (tensor,):
                torch.testing.assert_close(tensor, torch.full((100,), 12.0 / 8), atol=1e-6, rtol=0)
    finally:
        close_all(averagers, dhts)


def test_peers_with_different_shapes_never_form_a_group():
    dhts = make_swarm(2)
    averagers = [
        DecentralizedAverager([torch.zeros(10)], dhts[0], prefix="p", min_matchmaking_time=0.5),
        DecentralizedAverager([torch.ones(11)], dhts[1], prefix="p", min_matchmaking_time=0.5),
    ]
    try:
        assert step_all(averagers, timeout=1.5) == [None, None]
        with averagers[0].get_tensors() as (tensor,):
            assert torch.equal(tensor, torch.zeros(10))
    finally:
        close_all(averagers, dhts)


def test_invalid_arguments_are_refused():
    dhts = make_swarm(1)
    try:
        with pytest.raises(ValueError, match="prefix"):
            DecentralizedAverager([torch.zeros(1)], dhts[0], prefix="bad prefix!")
        with pytest.raises(TypeError, match="tensors"):
            DecentralizedAverager([torch.zeros(1, dtype=torch.int64)], dhts[0], prefix="x")
        with pytest.raises(ValueError, match="min_group_size"):
            DecentralizedAverager(
                [torch.zeros(1)], dhts[0], prefix="x", target_group_size=2, min_group_size=3
            )
        averager = DecentralizedAverager([torch.zeros(1)], dhts[0], prefix="x")
        with pytest.raises(ValueError, match="weight"):
            averager.step(weight=0)
        averager.shutdown()
    finally:
        close_all([], dhts)


def _donor(dht, value, priority, hook=None):
    averager = DecentralizedAverager(
        [torch.full((4, 100), value), torch.full((7,), -value)],
        dht,
        prefix="s",
        config=AveragingConfig(state_hook=hook),
    )
    averager.state_priority, averager.state_metadata = priority, {"epoch": priority}
    averager.shutdown()
    averager.run_in_background()  # re-declares itself with the new priority
    return averager


def test_newcomer_loads_the_most_advanced_state():
    dhts = make_swarm(3)
    donors = [_donor(dhts[0], 1.0, 1), _donor(dhts[1], 2.0, 5)]
    newcomer = DecentralizedAverager([torch.zeros(4, 100), torch.zeros(7)], dhts[2], prefix="s")
    try:
        metadata, _ = newcomer.load_state_from_peers()
        assert metadata == {"epoch": 5}
        with newcomer.get_tensors() as mine:
            assert torch.equal(mine[0], torch.full((4, 100), 2.0)) and torch.equal(
                mine[1], torch.full((7,), -2.0)
            )
    finally:
        close_all([*donors, newcomer], dhts)


def test_donor_killed_mid_transfer_leads_to_a_fallback():
    dhts = make_swarm(3)
    mid_transfer = threading.Event()

    async def stop_after_first_tensor(i):
        if i == 1:
            mid_transfer.set()
            await asyncio.Event().wait()  # until the test kills this donor

    def kill_the_best_donor():
        mid_transfer.wait()
        donors[1].shutdown()
        dhts[1].shutdown()

    donors = [_donor(dhts[0], 1.0, 1), _donor(dhts[1], 2.0, 5, hook=stop_after_first_tensor)]
    newcomer = DecentralizedAverager([torch.zeros(4, 100), torch.zeros(7)], dhts[2], prefix="s")
    killer = threading.Thread(target=kill_the_best_donor)
    killer.start()
    try:
        metadata, _ = newcomer.load_state_from_peers()
        killer.join()
        assert metadata == {"epoch": 1}  # the best donor failed: the next one's complete state
        with newcomer.get_tensors() as mine:
            assert torch.equal(mine[0], torch.full((4, 100), 1.0)) and torch.equal(
                mine[1], torch.full((7,), -1.0)
            )
    finally:
        close_all([*donors, newcomer], dhts)


def test_a_half_downloaded_state_is_never_installed():
    dhts = make_swarm(2)
    mid_transfer = threading.Event()

    async def stop_after_first_tensor(i):
        if i == 1:
            mid_transfer.set()
            await asyncio.Event().wait()  # until the test kills this donor

    def kill_the_only_donor():
        mid_transfer.wait()
        donor.shutdown()
        dhts[0].shutdown()

    donor = _donor(dhts[0], 2.0, 5, hook=stop_after_first_tensor)
    newcomer = DecentralizedAverager([torch.zeros(4, 100), torch.zeros(7)], dhts[1], prefix="s")
    killer = threading.Thread(target=kill_the_only_donor)
    killer.start()
    try:
        assert newcomer.load_state_from_peers() is None  # its first tensor arrived, the second never
        killer.join()
        with newcomer.get_tensors() as mine:
            assert not mine[0].any() and not mine[1].any()
        assert newcomer.state_metadata is None
    finally:
        close_all([donor, newcomer], dhts)
