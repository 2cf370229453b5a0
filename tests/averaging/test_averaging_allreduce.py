"""ButterflyAllReduce over an explicit group (no DHT): exactness, weights, client mode, codecs."""

from __future__ import annotations

import asyncio

import pytest
import torch
from averaging_helpers import explicit_group, make_peers, run_round, services, shutdown_all

from peer.averaging import protocol
from peer.averaging.allreduce import AllReduceSettings
from peer.compression import (
    BlockwiseQuantization,
    Float16Compression,
    ScaledFloat16Compression,
    Uniform8BitQuantization,
    decode,
)
from peer.compression.transfer import send_tensor
from peer.errors import RPCCode, RPCError
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


@pytest.mark.parametrize("codec", ["none", "fp16"])
def test_large_chunks_are_exact(codec):
    """Chunks of 512 KiB travel in large records: joined from the transport's buffers in a worker."""

    def wire(x):  # what the codec makes of a value on the wire
        return x.half().float() if codec == "fp16" else x

    async def scenario():
        peers = await make_peers(4)
        try:
            compression = Float16Compression() if codec == "fp16" else None
            settings = AllReduceSettings(chunk_size=1 << 17)
            svcs = services(peers, compression=compression, settings=settings)
            group = explicit_group(peers)
            torch.manual_seed(2)
            flats = [torch.randn(600_000) for _ in peers]
            originals = [f.clone() for f in flats]
            await run_round(svcs, group, flats, timeout=30.0)
            for reducer in range(4):
                part = slice(reducer * 150_000, (reducer + 1) * 150_000)
                # the reducer's own values are never encoded; the others' are, on the way in
                mean = sum(o[part] if j == reducer else wire(o[part]) for j, o in enumerate(originals)) / 4
                for i, flat in enumerate(flats):  # and the mean is encoded on the way back
                    if i == reducer or codec == "none":
                        torch.testing.assert_close(flat[part], mean, atol=1e-6, rtol=0)
                    else:  # a mean on a rounding boundary may round either way: one fp16 step
                        torch.testing.assert_close(flat[part], wire(mean), atol=1e-6, rtol=2**-10)
        finally:
            await shutdown_all(peers)

    run_coroutine(scenario())


@pytest.mark.parametrize("bad", ["numel", "dtype"])
def test_a_sender_of_malformed_chunks_is_excluded(bad):
    async def scenario():
        peers = await make_peers(3, (False, False, True))
        try:
            settings = AllReduceSettings(chunk_size=1000, sender_timeout=1.0)
            svcs = services(peers[:2], settings=settings)
            group = explicit_group(peers, client_modes=[False, False, True])
            flats = [torch.full((4000,), float(i)) for i in range(3)]

            async def rogue():  # sends one malformed chunk to the first reducer, nothing to the second
                chunk = torch.zeros(5) if bad == "numel" else torch.zeros(1000, dtype=torch.int64)
                target = str(peers[0].get_visible_maddrs()[0])
                request = protocol.encode_reduce_request(protocol.ReduceRequest(group.group_id, 1.0))
                async with peers[2].open_stream(target, protocol.reduce_method("test"), timeout=5) as rpc:
                    await rpc.send(request)
                    await send_tensor(rpc, chunk)
                    with pytest.raises(RPCError) as caught:
                        while await rpc.recv_tensor_header() is not None:
                            pass
                    return caught.value.code

            code, results = await asyncio.gather(rogue(), run_round(svcs, group, flats[:2], timeout=10.0))
            assert code == RPCCode.INVALID_ARGUMENT
            for flat, result in zip(flats[:2], results, strict=True):
                torch.testing.assert_close(flat, torch.full((4000,), 0.5), atol=1e-6, rtol=0)
                assert result.failed_senders == {str(peers[2].peer_id)}
        finally:
            await shutdown_all(peers)

    run_coroutine(scenario())


def test_buffers_are_reused_from_round_to_round():
    """Join buffers and accumulators come from each service's pool and are kept for the next rounds."""

    async def scenario():
        peers = await make_peers(3)
        try:
            svcs = services(peers, compression=Float16Compression())
            flats = [torch.randn(30_000) for _ in peers]

            def pools():
                return [
                    ({id(b) for b in s.pool._bytes}, {d: a.data_ptr() for d, a in s.pool._acc.items()})
                    for s in svcs
                ]

            await run_round(svcs, explicit_group(peers), flats)
            after_first = pools()
            assert all(buffers and accumulators for buffers, accumulators in after_first)
            for _ in range(3):
                await run_round(svcs, explicit_group(peers), flats)
            for (buffers, accumulators), (first_buffers, first_accumulators) in zip(
                pools(), after_first, strict=True
            ):
                assert accumulators == first_accumulators
                assert first_buffers <= buffers and len(buffers) <= 8  # at most one per chunk in flight
        finally:
            await shutdown_all(peers)

    run_coroutine(scenario())


LOSSY = [
    Float16Compression(),
    ScaledFloat16Compression(),
    Uniform8BitQuantization(),
    BlockwiseQuantization(blocksize=64, backend="torch"),
]


@pytest.mark.parametrize("codec", LOSSY, ids=repr)
def test_compressed_averaging_is_exactly_the_codecs_round_trips(codec):
    """Each chunk is encoded once on its way to the reducer and once on its way back, nothing else:
    the reducer's part is the mean of its own values and the others' round trips, and every other
    member holds the round trip of exactly what the reducer computed."""

    def round_trip(x):
        return decode(codec.encode(x))

    async def scenario():
        peers = await make_peers(3)
        try:
            svcs = services(peers, compression=codec, settings=AllReduceSettings(chunk_size=500))
            torch.manual_seed(4)
            flats = [torch.randn(3000) * (i + 1) for i in range(3)]
            originals = [f.clone() for f in flats]
            await run_round(svcs, explicit_group(peers), flats)
            for reducer in range(3):
                for start in range(reducer * 1000, (reducer + 1) * 1000, 500):
                    chunk = slice(start, start + 500)
                    own = flats[reducer][chunk]
                    mean = sum(
                        o[chunk] if j == reducer else round_trip(o[chunk]) for j, o in enumerate(originals)
                    )
                    torch.testing.assert_close(own, mean / 3, atol=1e-5, rtol=1e-6)
                    for i in set(range(3)) - {reducer}:
                        assert torch.equal(flats[i][chunk], round_trip(own))
        finally:
            await shutdown_all(peers)

    run_coroutine(scenario())
