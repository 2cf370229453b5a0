"""ButterflyAllReduce over an explicit group (no DHT): exactness, weights, client mode, codecs."""

from __future__ import annotations

import pytest
import torch
from averaging_helpers import explicit_group, make_peers, run_round, services, shutdown_all

from peer.averaging.allreduce import AllReduceSettings
from peer.compression import Float16Compression
from peer.utils.loop import run_coroutine


@pytest.mark.parametrize("num_clients", [0, 1, 2])
def test_four_peers_get_the_exact_mean(num_clients):
    async def scenario():
        modes = tuple(i >= 4 - num_clients for i in range(4))
        peers = await make_peers(4, modes)
        try:
            svcs = services(peers)
            group = explicit_group(peers, client_modes=list(modes), bandwidths=[1.0, 2.0, 1.0, 1.0])
            torch.manual_seed(0)
            flats = [torch.randn(10_007) for _ in peers]
            expected = torch.stack(flats).mean(0)
            results = await run_round(svcs, group, flats)
            for flat, result in zip(flats, results, strict=True):
                torch.testing.assert_close(flat, expected, atol=1e-6, rtol=0)
                assert result.participants == group.peer_ids
        finally:
            await shutdown_all(peers)

    run_coroutine(scenario())


def test_weighted_mean_is_exact():
    async def scenario():
        peers = await make_peers(3)
        try:
            svcs = services(peers)
            group = explicit_group(peers)
            flats = [torch.full((5000,), float(i)) for i in range(3)]
            weights = [1.0, 2.0, 5.0]
            await run_round(svcs, group, flats, weights)
            expected = (0 * 1 + 1 * 2 + 2 * 5) / 8
            for flat in flats:
                torch.testing.assert_close(flat, torch.full((5000,), expected), atol=1e-6, rtol=0)
        finally:
            await shutdown_all(peers)

    run_coroutine(scenario())


def test_fp16_averaging_stays_within_the_codec_error():
    async def scenario():
        peers = await make_peers(4)
        try:
            svcs = services(peers, compression=Float16Compression())
            group = explicit_group(peers)
            torch.manual_seed(1)
            flats = [torch.randn(20_000) for _ in peers]
            expected = torch.stack(flats).mean(0)
            # each value is rounded to fp16 once on the way in and once on the way out
            bound = 2.0**-11 * (torch.stack(flats).abs().mean(0) + expected.abs()) + 2.0**-24
            await run_round(svcs, group, flats)
            for flat in flats:
                assert ((flat - expected).abs() <= bound).all()
                assert not torch.equal(flat, expected)  # the codec did run
        finally:
            await shutdown_all(peers)

    run_coroutine(scenario())


def test_group_of_one_keeps_its_values():
    async def scenario():
        peers = await make_peers(1)
        try:
            (svc,) = services(peers)
            flat = torch.arange(10.0)
            (result,) = await run_round([svc], explicit_group(peers), [flat])
            assert torch.equal(flat, torch.arange(10.0))
            assert result.participants == [str(peers[0].peer_id)]
        finally:
            await shutdown_all(peers)

    run_coroutine(scenario())


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="chunk_size"):
        AllReduceSettings(chunk_size=0)
    with pytest.raises(ValueError, match="sender_timeout"):
        AllReduceSettings(sender_timeout=0)
