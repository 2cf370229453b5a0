"""Faults injected at fixed points of a round: killed senders, killed reducers, slow senders.

The healthy peers must finish before the round's deadline, and every chunk they hold must be either
the mean of the senders that contributed to it, or (for a dead reducer's part) their local values.
"""

from __future__ import annotations

import asyncio

import torch
from averaging_helpers import explicit_group, make_peers, run_round, services, shutdown_all

from peer.averaging.allreduce import AllReduceHooks, AllReduceSettings
from peer.averaging.partition import chunk_spans, part_spans
from peer.errors import ConnectionClosedError
from peer.utils.loop import run_coroutine

N, SIZE, CHUNK = 4, 4000, 250  # 4 parts of 1000 values, 4 chunks each


def _flats():
    torch.manual_seed(7)
    return [torch.randn(SIZE) for _ in range(N)]


def _check(flats, originals, group, healthy, allowed_by_part):
    """allowed_by_part(part, chunk_index, peer) -> list of acceptable value tensors for that chunk."""
    spans = part_spans(group.part_sizes(SIZE))
    for peer in healthy:
        for part, (start, end) in enumerate(spans):
            for k, (s, e) in enumerate(chunk_spans(start, end, CHUNK)):
                got = flats[peer][s:e]
                options = [option[s:e] for option in allowed_by_part(part, k, peer)]
                assert any(torch.allclose(got, o, atol=1e-6, rtol=0) for o in options), (peer, part, k)


def _means(originals, who):
    return torch.stack([originals[i] for i in who]).mean(0)


def _settings(hooks_by_peer):
    return [AllReduceSettings(chunk_size=CHUNK, sender_timeout=1.0, hooks=h) for h in hooks_by_peer]


def _services(peers, settings):
    return [services([p], settings=s)[0] for p, s in zip(peers, settings, strict=True)]


def test_sender_killed_before_sending():
    async def scenario():
        peers = await make_peers(N)
        reached, killed = asyncio.Event(), asyncio.Event()

        async def kill_before_first_chunk(reducer, k):
            reached.set()
            await killed.wait()
            raise ConnectionClosedError("killed by the test")

        async def kill_peer_three():
            await reached.wait()
            await peers[3].ashutdown()
            killed.set()

        try:
            svcs = _services(
                peers, _settings([AllReduceHooks()] * 3 + [AllReduceHooks(kill_before_first_chunk)])
            )
            group = explicit_group(peers)
            flats = _flats()
            originals = [f.clone() for f in flats]
            _, results = await asyncio.gather(kill_peer_three(), run_round(svcs, group, flats, timeout=8.0))
            mean3, mean4 = _means(originals, [0, 1, 2]), _means(originals, range(4))
            _check(
                flats,
                originals,
                group,
                [0, 1, 2],
                lambda part, k, peer: [mean3] if part < 3 else [mean4, originals[peer]],
            )
            for result in results[:3]:
                assert str(peers[3].peer_id) in result.failed_senders | result.failed_reducers
                assert str(peers[3].peer_id) not in result.participants
                assert len(result.participants) == 3
        finally:
            await shutdown_all(peers)

    run_coroutine(scenario())


def test_sender_killed_while_sending():
    async def scenario():
        peers = await make_peers(N)
        arrived, reached, killed = [0], asyncio.Event(), asyncio.Event()

        async def kill_at_chunk_two(reducer, k):
            if k == 2:
                arrived[0] += 1
                if arrived[0] == 3:  # every sending task of peer 3 sent chunks 0 and 1
                    reached.set()
                await killed.wait()
                raise ConnectionClosedError("killed by the test")

        async def kill_peer_three():
            await reached.wait()
            await peers[3].ashutdown()
            killed.set()

        try:
            svcs = _services(peers, _settings([AllReduceHooks()] * 3 + [AllReduceHooks(kill_at_chunk_two)]))
            group = explicit_group(peers)
            flats = _flats()
            originals = [f.clone() for f in flats]
            await asyncio.gather(kill_peer_three(), run_round(svcs, group, flats, timeout=8.0))
            mean3, mean4 = _means(originals, [0, 1, 2]), _means(originals, range(4))

            def allowed(part, k, peer):
                if part == 3:
                    return [mean4, originals[peer]]
                return [mean4, mean3] if k < 2 else [mean3]  # peer 3 never sent chunks 2 and 3

            _check(flats, originals, group, [0, 1, 2], allowed)
        finally:
            await shutdown_all(peers)

    run_coroutine(scenario())


def test_reducer_killed_while_reducing():
    async def scenario():
        peers = await make_peers(N)
        arrived, reached = [0], asyncio.Event()

        async def stop_at_chunk_one(sender, k):
            if k == 1:
                arrived[0] += 1
                if arrived[0] == 3:
                    reached.set()
                await asyncio.Event().wait()  # until peer 2 is shut down

        async def kill_peer_two():
            await reached.wait()
            await peers[2].ashutdown()

        try:
            hooks = (
                [AllReduceHooks()] * 2
                + [AllReduceHooks(before_reduce_chunk=stop_at_chunk_one)]
                + [AllReduceHooks()]
            )
            svcs = _services(peers, _settings(hooks))
            group = explicit_group(peers)
            flats = _flats()
            originals = [f.clone() for f in flats]
            _, results = await asyncio.gather(kill_peer_two(), run_round(svcs, group, flats, timeout=8.0))
            mean3, mean4 = _means(originals, [0, 1, 3]), _means(originals, range(4))

            def allowed(part, k, peer):
                if part == 2:  # the dead reducer's part: local values, except maybe chunk 0
                    return [mean4, originals[peer]] if k == 0 else [originals[peer]]
                return [mean4, mean3]

            _check(flats, originals, group, [0, 1, 3], allowed)
            for i in (0, 1, 3):
                assert str(peers[2].peer_id) in results[i].failed_reducers
        finally:
            await shutdown_all(peers)

    run_coroutine(scenario())


def test_slow_sender_is_excluded_and_the_others_finish():
    async def scenario():
        peers = await make_peers(N)

        async def stall_at_chunk_one(reducer, k):
            if k == 1:
                await asyncio.Event().wait()  # never sends chunk 1; cancelled when excluded

        try:
            svcs = _services(peers, _settings([AllReduceHooks()] * 3 + [AllReduceHooks(stall_at_chunk_one)]))
            group = explicit_group(peers)
            flats = _flats()
            originals = [f.clone() for f in flats]
            results = await run_round(svcs, group, flats, timeout=20.0)
            mean3, mean4 = _means(originals, [0, 1, 2]), _means(originals, range(4))
            _check(
                flats,
                originals,
                group,
                [0, 1, 2],
                lambda part, k, peer: [mean4] if part == 3 or k == 0 else [mean3],
            )
            slow = str(peers[3].peer_id)
            for result in results[:3]:
                assert result.failed_senders == {slow}
                assert not result.failed_reducers
        finally:
            await shutdown_all(peers)

    run_coroutine(scenario())


def test_slow_reducer_costs_only_its_part_and_the_others_finish_by_the_deadline():
    async def scenario():
        peers = await make_peers(N)
        release = asyncio.Event()

        async def stall_every_chunk(sender, k):
            await release.wait()  # peer 2 never reduces within the round

        try:
            hooks = [AllReduceHooks()] * 2 + [AllReduceHooks(before_reduce_chunk=stall_every_chunk)]
            svcs = _services(peers, _settings([*hooks, AllReduceHooks()]))
            group = explicit_group(peers)
            flats = _flats()
            originals = [f.clone() for f in flats]
            started = asyncio.get_running_loop().time()
            results = await run_round(svcs, group, flats, timeout=3.0)
            elapsed = asyncio.get_running_loop().time() - started
            release.set()
            mean4 = _means(originals, range(4))
            # every part but the slow reducer's is the mean of all four (peer 2 still sent its values)
            _check(
                flats,
                originals,
                group,
                range(4),
                lambda part, k, peer: [originals[peer] if part == 2 else mean4],
            )
            slow = str(peers[2].peer_id)
            for i in (0, 1, 3):
                assert results[i].failed_reducers == {slow}
            assert (
                elapsed < 6.0
            )  # the deadline bounds the wait for the slow reducer (generous on a busy machine)
        finally:
            await shutdown_all(peers)

    run_coroutine(scenario())
