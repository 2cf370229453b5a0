"""Matchmaking through the DHT: a vanished leader, the minimum group size, two groups merging."""

from __future__ import annotations

import asyncio

import pytest
from averaging_helpers import make_swarm

from peer.averaging.matchmaking import Matchmaking, MatchmakingSettings
from peer.averaging.partition import GroupMember
from peer.dht import get_dht_time
from peer.utils.loop import run_coroutine

SCHEMA = b"s" * 16


def _member(dht) -> GroupMember:
    return GroupMember(str(dht.p2p.peer_id), tuple(str(m) for m in dht.p2p.get_visible_maddrs()))


@pytest.fixture()
def swarm(request):
    dhts = make_swarm(request.param)
    yield dhts
    for dht in dhts:
        dht.shutdown()


async def _until(condition, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting for the condition"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("swarm", [3], indirect=True)
def test_a_vanished_leader_does_not_strand_its_followers(swarm):
    settings = MatchmakingSettings(target_group_size=4, min_group_size=2, min_matchmaking_time=2.0)
    makers = [Matchmaking(dht, "mm", settings, client_mode=False) for dht in swarm]

    async def scenario():
        deadline = get_dht_time() + 8.0
        leader = asyncio.ensure_future(makers[0].look_for_group("mm.k", SCHEMA, _member(swarm[0]), deadline))
        await _until(lambda: makers[0]._search is not None)
        await asyncio.sleep(0.1)  # the leader's declaration is stored: it is the most senior
        followers = [
            asyncio.ensure_future(m.look_for_group("mm.k", SCHEMA, _member(d), deadline))
            for m, d in zip(makers[1:], swarm[1:], strict=True)
        ]
        await _until(lambda: makers[0]._search is not None and len(makers[0]._search.followers) == 2)
        leader.cancel()
        await swarm[0].p2p.ashutdown()  # the leader vanishes with two followers waiting for BEGIN
        started = asyncio.get_running_loop().time()
        groups = await asyncio.gather(*followers)
        return groups, asyncio.get_running_loop().time() - started

    groups, elapsed = run_coroutine(scenario())
    survivors = {str(dht.p2p.peer_id) for dht in swarm[1:]}
    assert all(group is not None and set(group.peer_ids) == survivors for group in groups)
    assert groups[0].group_id == groups[1].group_id
    assert elapsed < 6.0  # they regrouped within one matchmaking window, not at the step's end


@pytest.mark.parametrize("swarm", [3], indirect=True)
def test_no_group_forms_below_the_minimum_size(swarm):
    settings = MatchmakingSettings(target_group_size=4, min_group_size=4, min_matchmaking_time=0.5)
    makers = [Matchmaking(dht, "mm", settings, client_mode=False) for dht in swarm]

    async def scenario():
        deadline = get_dht_time() + 1.2
        return await asyncio.gather(
            *(
                m.look_for_group("mm.k", SCHEMA, _member(d), deadline)
                for m, d in zip(makers, swarm, strict=True)
            )
        )

    assert run_coroutine(scenario()) == [None, None, None]


@pytest.mark.parametrize("swarm", [3], indirect=True)
def test_a_group_formed_around_a_junior_leader_merges_into_the_senior_one(swarm):
    """The senior peer's declaration reaches the DHT late, so the two others first group together;
    once the junior leader sees the senior one, it disbands and everyone joins the senior."""
    settings = MatchmakingSettings(target_group_size=3, min_group_size=2, min_matchmaking_time=4.0)
    makers = [Matchmaking(dht, "mm", settings, client_mode=False) for dht in swarm]
    store = swarm[0].astore
    stored = asyncio.Event()

    async def late_store(*args, **kwargs):
        await _until(lambda: makers[1]._search is not None and makers[1]._search.followers)
        result = await store(*args, **kwargs)
        stored.set()
        return result

    swarm[0].astore = late_store

    async def scenario():
        deadline = get_dht_time() + 10.0
        senior = asyncio.ensure_future(makers[0].look_for_group("mm.k", SCHEMA, _member(swarm[0]), deadline))
        await _until(lambda: makers[0]._search is not None)
        juniors = []
        for maker, dht in zip(makers[1:], swarm[1:], strict=True):
            juniors.append(
                asyncio.ensure_future(maker.look_for_group("mm.k", SCHEMA, _member(dht), deadline))
            )
            await _until(lambda maker=maker: maker._search is not None)
            await asyncio.sleep(0.2)  # peer 1 is declared before peer 2 looks: peer 2 follows it
        return await asyncio.gather(senior, *juniors)

    groups = run_coroutine(scenario())
    assert stored.is_set()
    assert all(group is not None and len(group.members) == 3 for group in groups)
    assert len({group.group_id for group in groups}) == 1
    assert groups[0].members[0].peer_id == str(swarm[0].p2p.peer_id)  # the senior peer leads
