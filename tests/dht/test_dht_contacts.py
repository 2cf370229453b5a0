"""Routing-table upkeep over the network: ping before evicting, and bans of peers that stop answering."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable

from dht_swarm import TEST_CONFIG, shutdown_all, start_swarm

from peer.dht import DHTID, DHTNode
from peer.dht.routing import ID_BITS
from peer.net.identity import Identity
from peer.net.p2p import P2P
from peer.utils.loop import run_coroutine

PREFIX_BITS = 5  # a far bucket at this depth may not split (DEPTH_MODULO = 5)


async def eventually(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never became true"
        await asyncio.sleep(0.02)


def identity_with_prefix(prefix: int) -> Identity:
    """An identity whose node id starts with the `PREFIX_BITS` bits of `prefix` (about 32 tries)."""
    while True:
        identity = Identity.generate()
        if DHTID.from_peer_id(identity.peer_id).value >> (ID_BITS - PREFIX_BITS) == prefix:
            return identity


async def start_node(identity: Identity | None = None, k: int = TEST_CONFIG.k) -> DHTNode:
    p2p = await P2P.acreate(identity=identity)
    return await DHTNode.create(p2p, config=dataclasses.replace(TEST_CONFIG, k=k))


async def stop_node(node: DHTNode) -> None:
    await node.shutdown()
    await node.p2p.ashutdown()


async def contact(node: DHTNode, target: DHTNode) -> None:
    """`node` pings `target`, which thereby learns about `node`."""
    node.p2p.add_addresses(target.peer_id, [str(m) for m in target.p2p.get_visible_maddrs()])
    assert await node.protocol.call_ping(target.peer_id)


def test_a_full_bucket_pings_its_least_recently_seen_node_and_evicts_it_only_if_it_is_dead() -> None:
    async def scenario():
        table_owner = await start_node(k=1)
        far = (table_owner.node_id.value >> (ID_BITS - PREFIX_BITS)) ^ (1 << (PREFIX_BITS - 1))
        old = await start_node(identity_with_prefix(far))
        new = await start_node(identity_with_prefix(far))
        table = table_owner.routing_table
        try:
            await contact(old, table_owner)
            assert old.peer_id in table
            seen_before = table.get(old.peer_id).last_seen
            # the bucket is full (k = 1) and may not split: the newcomer waits, the old node is pinged
            await contact(new, table_owner)
            bucket = table.bucket_for(new.node_id)
            assert new.peer_id in bucket.replacements and bucket.depth == PREFIX_BITS
            await eventually(lambda: table.get(old.peer_id).last_seen > seen_before)
            assert old.peer_id in table and new.peer_id not in table  # it answered: it stays
            old_id = old.peer_id
            await stop_node(old)
            await contact(new, table_owner)  # the old node does not answer the ping this time
            await eventually(lambda: new.peer_id in table)
            return old_id not in table, table_owner.blacklist.failures(old_id)
        finally:
            for node in (table_owner, new, old):
                if node.p2p.is_alive:
                    await stop_node(node)

    evicted, failures = run_coroutine(scenario())
    assert evicted and failures == 1


def test_a_peer_that_stops_answering_is_dropped_banned_and_not_asked_again() -> None:
    async def scenario():
        swarm = await start_swarm(8, random.Random(50))
        try:
            node, victim = swarm[0].node, swarm[1]
            victim_id, victim_node_id = victim.peer_id, victim.node.node_id
            assert victim_id in node.routing_table
            await victim.ashutdown()
            nearest = await node.find_nearest([victim_node_id])  # the victim is its own nearest peer
            first = (victim_id in node.routing_table, node.blacklist.failures(victim_id))
            banned = node.blacklist.is_banned(victim_id, time.monotonic())
            await node.find_nearest([victim_node_id])  # the others still name it: it is skipped
            again = node.blacklist.failures(victim_id)
            return victim_id, nearest[victim_node_id], first, banned, again
        finally:
            await shutdown_all(dht for dht in swarm if dht.is_alive)

    victim_id, nearest, (still_routed, failures), banned, failures_again = run_coroutine(scenario())
    assert len(nearest) == 6 and victim_id not in nearest  # every live peer but the asker
    assert not still_routed and failures == 1 and banned
    assert failures_again == 1


def test_a_peer_that_accepts_connections_but_never_answers_is_banned_at_the_deadline() -> None:
    config = dataclasses.replace(TEST_CONFIG, request_timeout=0.5)

    async def scenario():
        held: list[asyncio.StreamWriter] = []

        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # accept, then say nothing: no handshake, no answer

        silent = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        node = await DHTNode.create(await P2P.acreate(), config=config)
        mute = Identity.generate().peer_id
        try:
            node.contacts.on_contact(mute, [f"/ip4/127.0.0.1/tcp/{port}"], True)
            assert mute in node.routing_table
            started = asyncio.get_running_loop().time()
            await node.find_nearest([DHTID.from_peer_id(mute)])
            took = asyncio.get_running_loop().time() - started
            return took, mute in node.routing_table, node.blacklist.failures(mute)
        finally:
            await stop_node(node)
            silent.close()
            for writer in held:
                writer.close()
            await silent.wait_closed()

    took, still_routed, failures = run_coroutine(scenario())
    assert took < 5.0  # the lookup waited for the deadline, not for the transport's handshake timeout
    assert not still_routed and failures == 1
