"""The connection pool: one live connection per remote peer, reused by every call.

Concurrent calls to a peer that is not connected yet share one dial. Closed connections are skipped
at once and leave the pool, so the next call dials again; connections with no stream for
`TransportConfig.idle_timeout` are closed (`close_idle`, run periodically by `P2P`). The pool also
keeps the address book: the multiaddrs each peer was last reached at (or that the DHT told us about).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

from peer.errors import AuthorizationError, DialError, HandshakeError, NetworkError, RPCCode
from peer.net.connection import Connection
from peer.net.identity import PeerID
from peer.net.multiaddr import Multiaddr

MAX_ADDRESSES_PER_PEER = 8

DialOne = Callable[[Multiaddr, "PeerID | None"], Awaitable[Connection]]


class ConnectionPool:
    def __init__(self, dial_one: DialOne):
        self._dial_one = dial_one
        self._connections: dict[PeerID, list[Connection]] = {}
        self._dialing: dict[PeerID, asyncio.Future[Connection]] = {}
        self._addresses: dict[PeerID, list[Multiaddr]] = {}

    # ---- address book --------------------------------------------------------------------------

    def add_addresses(self, peer_id: PeerID, maddrs: Iterable[Multiaddr | str]) -> None:
        known = self._addresses.setdefault(peer_id, [])
        for text in maddrs:
            maddr = Multiaddr.parse(text)
            if not maddr.is_relayed:
                maddr = maddr.without_peer_id()
            if maddr in known:
                known.remove(maddr)
            known.insert(0, maddr)
        del known[MAX_ADDRESSES_PER_PEER:]

    def addresses(self, peer_id: PeerID) -> list[Multiaddr]:
        return list(self._addresses.get(peer_id, ()))

    # ---- connections ---------------------------------------------------------------------------

    def add(self, conn: Connection) -> None:
        if conn.remote_peer_id is None:
            raise ValueError("only connections that completed their handshake can be pooled")
        conns = self._connections.setdefault(conn.remote_peer_id, [])
        if conn not in conns:
            conns.append(conn)

    def remove(self, conn: Connection) -> None:
        peer_id = conn.remote_peer_id
        peer_conns = self._connections.get(peer_id) if peer_id is not None else None
        if peer_id is not None and peer_conns and conn in peer_conns:
            peer_conns.remove(conn)
            if not peer_conns:
                del self._connections[peer_id]

    def get_open(self, peer_id: PeerID) -> Connection | None:
        for conn in self._connections.get(peer_id, ()):
            if not conn.closed:
                return conn
        return None

    def close_idle(self, idle_timeout: float) -> list[Connection]:
        """Close the connections that have had no stream for `idle_timeout` seconds."""
        now = time.monotonic()
        idle = [
            conn
            for conn in self.all()
            if not conn.closed and conn.idle_since is not None and now - conn.idle_since >= idle_timeout
        ]
        for conn in idle:
            conn.close(RPCCode.OK, f"idle for {idle_timeout:.0f} s")
            self.remove(conn)
        return idle

    def trim(self, limit: int, grace: float) -> list[Connection]:
        """Close the least recently used idle connections beyond `limit`.

        Only connections idle for at least `grace` seconds are closed: a fresh one is about to carry
        the call it was dialed for. Returns the connections closed.
        """
        connections = self.all()
        if len(connections) <= limit:
            return []
        idle_before = time.monotonic() - grace
        idle = sorted(
            (conn.idle_since, index, conn)
            for index, conn in enumerate(connections)
            if not conn.closed and conn.idle_since is not None and conn.idle_since <= idle_before
        )
        closed = [conn for _, _, conn in idle[: len(connections) - limit]]
        for conn in closed:
            conn.close(RPCCode.OK, f"keeping at most {limit} connections")
            self.remove(conn)
        return closed

    def all(self) -> list[Connection]:
        return [conn for conns in self._connections.values() for conn in conns]

    async def connect(self, peer_id: PeerID, extra: Iterable[Multiaddr] = ()) -> Connection:
        """An open connection to `peer_id`, dialing its known addresses if there is none."""
        conn = self.get_open(peer_id)
        if conn is not None:
            return conn
        pending = self._dialing.get(peer_id)
        if pending is None:
            pending = asyncio.ensure_future(self._dial(peer_id, list(extra)))
            self._dialing[peer_id] = pending
            pending.add_done_callback(lambda done: self._dial_done(peer_id, done))
        return await asyncio.shield(pending)

    def _dial_done(self, peer_id: PeerID, done: asyncio.Future[Connection]) -> None:
        self._dialing.pop(peer_id, None)
        if not done.cancelled():
            done.exception()  # retrieved here: every waiter already got it

    async def _dial(self, peer_id: PeerID, extra: list[Multiaddr]) -> Connection:
        candidates = [*extra, *(m for m in self.addresses(peer_id) if m not in extra)]
        if not candidates:
            raise DialError(
                f"no known address for peer {peer_id}; pass a multiaddr or bootstrap through the DHT"
            )
        attempts: dict[str, str] = {}
        security_error: NetworkError | None = None
        for maddr in candidates:
            try:
                conn = await self._dial_one(maddr, peer_id)
            except (NetworkError, OSError) as e:
                attempts[str(maddr)] = f"{type(e).__name__}: {e}"
                if security_error is None and isinstance(e, (HandshakeError, AuthorizationError)):
                    security_error = e
                continue
            self.add_addresses(peer_id, [maddr])
            return conn
        if security_error is not None:  # the peer was reached but failed to prove itself, or refused us
            raise security_error
        tried = "; ".join(f"{maddr}: {why}" for maddr, why in attempts.items())
        raise DialError(f"could not reach peer {peer_id} ({tried})", attempts)
