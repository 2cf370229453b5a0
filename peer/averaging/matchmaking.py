"""Group formation through the DHT: leaders, followers and a deadline.

A peer looking for a group *declares* itself under its `GroupKey`: subkey = its PeerID, value =
(deadline, addresses), expiring at its deadline (DHT time). Peers are ordered by *seniority*, the pair
(deadline, PeerID): the earlier deadline leads. A peer that is not following anyone polls the key
(at once, then at intervals that double up to `min_matchmaking_time / 8`, so a crowd of peers does
not flood the DHT) and asks the most senior peer it has not tried yet to take it in
(`<prefix>.avg.join/1`). A leader:
- accepts followers of its key and schema while it is not itself trying to join someone, and only
  followers junior to it (so requests never form a cycle);
- if it sees a more senior peer under its key (whose declaration arrived late, so two groups
  formed), disbands its group and asks the senior one; its followers look again and follow it there;
- begins as soon as its group reaches `target_group_size`, or at its deadline if the group has at
  least `min_group_size` members; otherwise it disbands the group and declares a new deadline.
It streams BEGIN with the final member list to every follower; that list is the `GroupInfo` every
member runs the all-reduce with. A follower whose leader vanishes (the call breaks) or disbands goes
back to looking at once, so a dead leader never strands its followers. Client-mode peers never lead
and never declare themselves; they only join.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field

from peer.averaging import protocol
from peer.averaging.partition import GroupInfo, GroupMember
from peer.dht import get_dht_time
from peer.errors import NetworkError, RPCCode, RPCError
from peer.net.identity import PeerID
from peer.net.rpc import RPCStream

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.05  # seconds before the second DHT lookup; the interval then doubles each time
_NOT_LOOKING, _BUSY = "not looking for a group", "busy joining another group"
_MERGING = "joining a more senior group under the same key"
_TRANSIENT_REFUSALS = (_NOT_LOOKING, _BUSY, _MERGING)  # the follower may ask this leader again later


@dataclass(frozen=True)
class MatchmakingSettings:
    target_group_size: int = 4
    min_group_size: int = 2
    min_matchmaking_time: float = 5.0
    request_timeout: float = 3.0

    def __post_init__(self) -> None:
        if not isinstance(self.target_group_size, int) or self.target_group_size < 1:
            raise ValueError(f"target_group_size: expected a positive int, got {self.target_group_size!r}")
        if not isinstance(self.min_group_size, int) or not 1 <= self.min_group_size <= self.target_group_size:
            raise ValueError(
                f"min_group_size: expected an int in [1, target_group_size], got {self.min_group_size!r}"
            )
        if not self.min_matchmaking_time > 0:
            raise ValueError(
                f"min_matchmaking_time: expected a positive number, got {self.min_matchmaking_time!r}"
            )
        if not self.request_timeout > 0:
            raise ValueError(f"request_timeout: expected a positive number, got {self.request_timeout!r}")


@dataclass
class _Search:
    """This peer's state while it looks for a group under one key."""

    key: str
    schema: bytes
    me: GroupMember
    deadline: float  # DHT time
    following: bool = False
    followers: dict[str, tuple[GroupMember, asyncio.Queue[protocol.LeaderMessage]]] = field(
        default_factory=dict
    )
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    begun: bool = False

    @property
    def seniority(self) -> tuple[float, str]:
        return (self.deadline, self.me.peer_id)


class Matchmaking:
    """Finds groups for one averager: `await look_for_group(...)` -> `GroupInfo` or None."""

    def __init__(self, dht, prefix: str, settings: MatchmakingSettings, *, client_mode: bool):
        self.dht, self.p2p, self.prefix = dht, dht.p2p, prefix
        self.settings, self.client_mode = settings, client_mode
        self._search: _Search | None = None
        self._method = protocol.join_method(prefix)
        # polls back off up to this: the first ones find the group, later ones only catch stragglers
        self._max_poll_interval = max(POLL_INTERVAL, settings.min_matchmaking_time / 8)
        if not client_mode:
            self.p2p.add_handler(self._method, self.rpc_join)

    def close(self) -> None:
        self.p2p.rpc.remove_handler(self._method)

    async def look_for_group(
        self, key: str, schema: bytes, me: GroupMember, deadline: float
    ) -> GroupInfo | None:
        """Find a group under `key` before `deadline` (DHT time); None when none formed in time."""
        tried: set[str] = set()
        while get_dht_time() < deadline:
            own_deadline = min(get_dht_time() + self.settings.min_matchmaking_time, deadline)
            search = self._search = _Search(key, schema, me, own_deadline)
            try:
                group = await self._one_attempt(search, tried)
            finally:
                self._search = None
                await self._disband(search, "the leader stopped looking")
            if group is not None:
                return group
        return None

    async def _one_attempt(self, search: _Search, tried: set[str]) -> GroupInfo | None:
        if not self.client_mode:
            maddrs = list(search.me.maddrs)
            await self.dht.astore(
                search.key, [search.deadline, maddrs], search.deadline, subkey=search.me.peer_id
            )
        loop = asyncio.get_running_loop()
        next_poll, interval = loop.time(), POLL_INTERVAL
        while True:
            now = get_dht_time()
            if len(search.followers) + 1 >= self.settings.target_group_size:
                return await self._begin(search)
            if now >= search.deadline:
                if not self.client_mode and len(search.followers) + 1 >= self.settings.min_group_size:
                    return await self._begin(search)
                return None
            if loop.time() >= next_poll:
                seniors = await self._seniors(search, tried)
                next_poll, interval = loop.time() + interval, min(2 * interval, self._max_poll_interval)
                if seniors and search.followers:  # two groups formed under one key: join the senior one
                    await self._disband(search, _MERGING)
                for peer_id, maddrs in seniors:
                    if search.followers:
                        break
                    tried.add(peer_id)
                    group = await self._request_join(search, peer_id, maddrs, tried)
                    if group is not None:
                        return group
            search.changed.clear()
            wait = max(min(next_poll - loop.time(), search.deadline - get_dht_time()), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(search.changed.wait(), wait)

    async def _seniors(self, search: _Search, tried: set[str]) -> list[tuple[str, list[str]]]:
        """Declared peers more senior than us that we have not tried yet, the most senior first."""
        found = await self.dht.aget(search.key, latest=True)
        if found is None or not isinstance(found.value, dict):
            return []
        now, candidates = get_dht_time(), []
        for subkey, item in found.value.items():
            try:
                their_deadline, maddrs = float(item.value[0]), [str(m) for m in item.value[1]]
            except (TypeError, ValueError, IndexError, KeyError):
                continue
            peer_id = str(subkey)
            if peer_id == search.me.peer_id or peer_id in tried or their_deadline <= now:
                continue
            if self.client_mode or (their_deadline, peer_id) < search.seniority:
                candidates.append(((their_deadline, peer_id), maddrs))
        candidates.sort()
        return [(peer_id, maddrs) for (_, peer_id), maddrs in candidates]

    async def _request_join(
        self, search: _Search, leader: str, maddrs: list[str], tried: set[str]
    ) -> GroupInfo | None:
        """Follow `leader`: None if it refused, disbanded or vanished (then we look again)."""
        search.following = True
        request = protocol.JoinRequest(search.key, search.schema, search.deadline, search.me)
        try:
            peer_id = PeerID.from_base58(leader)
            if maddrs:
                self.p2p.add_addresses(peer_id, maddrs)
            wait = max(search.deadline, get_dht_time()) - get_dht_time() + 2 * self.settings.request_timeout
            wait += self.settings.min_matchmaking_time  # the leader's deadline may be later than ours
            async with self.p2p.open_stream(
                peer_id, self._method, timeout=wait, first=protocol.encode_join(request)
            ) as rpc:
                async for message in rpc.messages(protocol.LeaderMessageProto):
                    reply = protocol.decode_leader_message(message)
                    if reply.code == protocol.LeaderCode.BEGIN:
                        assert reply.group is not None
                        if search.me.peer_id not in reply.group.peer_ids:
                            return None
                        return reply.group
                    if reply.code != protocol.LeaderCode.ACCEPTED:
                        logger.debug("leader %s answered %s: %s", leader[:12], reply.code.name, reply.reason)
                        if reply.reason in _TRANSIENT_REFUSALS:
                            tried.discard(leader)  # it may take us a moment later: ask again on the next poll
                        return None
        except (NetworkError, ValueError) as e:
            logger.debug("joining leader %s failed: %s", leader[:12], e)
        finally:
            search.following = False
        return None

    async def _begin(self, search: _Search) -> GroupInfo:
        search.begun = True
        followers = sorted(search.followers.items(), key=lambda item: item[0])
        members = (search.me, *(member for _, (member, _) in followers))
        group = GroupInfo(group_id=os.urandom(16), members=members)
        for _, (_, queue) in followers:
            queue.put_nowait(protocol.LeaderMessage(protocol.LeaderCode.BEGIN, group=group))
        search.followers.clear()
        return group

    async def _disband(self, search: _Search, reason: str) -> None:
        for _, queue in search.followers.values():
            queue.put_nowait(protocol.LeaderMessage(protocol.LeaderCode.DISBANDED, reason))
        search.followers.clear()

    async def rpc_join(self, rpc: RPCStream) -> None:
        message = await rpc.recv(protocol.JoinRequestProto)
        if message is None:
            raise RPCError(RPCCode.INVALID_ARGUMENT, "avg.join needs a JoinRequest")
        request = protocol.decode_join(message, str(rpc.remote_peer_id))
        search = self._search
        reason = self._refusal(search, request)
        if reason:
            await rpc.send(
                protocol.encode_leader_message(protocol.LeaderMessage(protocol.LeaderCode.REJECTED, reason))
            )
            return
        assert search is not None
        queue: asyncio.Queue[protocol.LeaderMessage] = asyncio.Queue()
        search.followers[request.member.peer_id] = (request.member, queue)
        search.changed.set()
        try:
            accepted = protocol.LeaderMessage(protocol.LeaderCode.ACCEPTED)
            await rpc.send(protocol.encode_leader_message(accepted))
            final = await queue.get()
            await rpc.send(protocol.encode_leader_message(final))
        finally:
            if not search.begun and search.followers.get(request.member.peer_id, (None, None))[1] is queue:
                del search.followers[request.member.peer_id]
                search.changed.set()

    def _refusal(self, search: _Search | None, request: protocol.JoinRequest) -> str:
        if search is None or search.begun:
            return _NOT_LOOKING
        if request.group_key != search.key:
            return f"looking under another key ({search.key})"
        if request.schema_hash != search.schema:
            return "incompatible tensors (schema hash differs)"
        if search.following:
            return _BUSY
        if len(search.followers) + 1 >= self.settings.target_group_size:
            return "the group is full"
        if get_dht_time() >= search.deadline:
            return "the group is already closed"
        if not request.member.client_mode and (request.deadline, request.member.peer_id) < search.seniority:
            return "the follower is more senior than the leader"
        return ""
