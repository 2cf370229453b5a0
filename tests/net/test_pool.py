"""The connection pool keeps a bounded number of connections, closing the least recently used."""

from __future__ import annotations

import asyncio

from net_helpers import call_echo, running_peers, wait_for


def test_trim_closes_the_least_recently_used_idle_connections() -> None:
    async def scenario() -> None:
        async with running_peers(4) as (caller, *targets):
            for target in targets:  # used in this order: targets[0] is the least recently used
                await call_echo(caller, target.get_visible_maddrs()[0])
                await asyncio.sleep(0.02)
            await wait_for(lambda: all(conn.idle_since is not None for conn in caller.pool.all()))
            assert caller.pool.trim(limit=10, grace=0.0) == []  # under the limit: nothing closes
            closed = caller.pool.trim(limit=1, grace=0.0)
            assert [conn.remote_peer_id for conn in closed] == [targets[0].peer_id, targets[1].peer_id]
            assert [conn.remote_peer_id for conn in caller.pool.all()] == [targets[2].peer_id]
            assert caller.pool.trim(limit=0, grace=60.0) == []  # nothing has been idle for a minute
            assert await call_echo(caller, targets[0].peer_id, 5) == 6  # a trimmed peer is redialed

    asyncio.run(scenario())
