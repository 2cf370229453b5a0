"""`peer.DHT`: the public face of the DHT, blocking and async (DESIGN: the Python API).

    dht = DHT(initial_peers=["/ip4/1.2.3.4/tcp/31337/p2p/12D3KooW..."], host_maddrs=["/ip4/0.0.0.0/tcp/0"])
    dht.store("run_progress", {"epoch": 3}, get_dht_time() + 60, subkey=owner_marker(dht.peer_id))
    dht.get("run_progress", latest=True)   # -> ValueWithExpiration({subkey: ValueWithExpiration}, ...)

Each blocking method submits to the process's peer event loop and waits; its async twin (`astore`,
`aget`, `astore_many`, `aget_many`, `ashutdown`) runs on that loop. Keys are str/bytes/ints, values
anything msgpack serializes. A key or subkey containing `owner_marker(peer_id)` is signed with this
peer's identity and can be overwritten by nobody else (a `SignatureValidator` is always installed).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from peer.dht.config import DHTConfig
from peer.dht.node import DHTNode
from peer.dht.storage import ValueWithExpiration
from peer.dht.validation import CompositeValidator, RecordValidator, SignatureValidator
from peer.errors import DHTError
from peer.net.auth import Authorizer
from peer.net.multiaddr import Multiaddr
from peer.net.p2p import P2P
from peer.utils.loop import run_coroutine

T = TypeVar("T")


class DHT:
    """A DHT peer (see the module docstring). With `start=False`, call `start()` later."""

    def __init__(
        self,
        initial_peers: Sequence[str | Multiaddr] = (),
        *,
        host_maddrs: Sequence[str | Multiaddr] = ("/ip4/127.0.0.1/tcp/0",),
        client_mode: bool = False,
        start: bool = True,
        identity_path: str | os.PathLike[str] | None = None,
        authorizer: Authorizer | None = None,
        record_validators: Sequence[RecordValidator] = (),
        config: DHTConfig | None = None,
    ):
        if isinstance(initial_peers, (str, Multiaddr)):
            raise TypeError("initial_peers must be a list of multiaddrs, not a single one")
        self.initial_peers = [str(Multiaddr.parse(m)) for m in initial_peers]
        self.host_maddrs = [] if client_mode else [str(Multiaddr.parse(m)) for m in host_maddrs]
        self.client_mode = client_mode
        self.identity_path = identity_path
        self.authorizer = authorizer
        self.config = config or DHTConfig()
        self._extra_validators = list(record_validators)
        self.p2p: P2P | None = None
        self.node: DHTNode | None = None
        if start:
            self.start()

    # ---- lifecycle -----------------------------------------------------------------------------

    async def astart(self) -> None:
        if self.node is not None:
            return
        self.p2p = await P2P.acreate(
            identity_path=self.identity_path,
            host_maddrs=self.host_maddrs,
            announce_maddrs=self.config.announce_maddrs,
            authorizer=self.authorizer,
        )
        validators = [SignatureValidator(self.p2p.identity), *self._extra_validators]
        try:
            self.node = await DHTNode.create(
                self.p2p,
                initial_peers=self.initial_peers,
                config=self.config,
                validator=CompositeValidator(validators),
                client_mode=self.client_mode,
            )
        except BaseException:
            await self.p2p.ashutdown()
            raise

    def start(self) -> None:
        run_coroutine(self.astart())

    async def ashutdown(self) -> None:
        if self.node is not None:
            await self.node.shutdown()
        if self.p2p is not None:
            await self.p2p.ashutdown()
        self.node = None

    def shutdown(self) -> None:
        run_coroutine(self.ashutdown())

    def _require_node(self) -> DHTNode:
        if self.node is None:
            raise DHTError("this DHT is not running; call start() first")
        return self.node

    @property
    def peer_id(self):
        return self._require_node().peer_id

    def get_visible_maddrs(self) -> list[str]:
        """Where others can reach this peer: pass these as their `initial_peers`."""
        node = self._require_node()
        return [str(maddr) for maddr in node.p2p.get_visible_maddrs()]

    @property
    def is_alive(self) -> bool:
        return self.node is not None

    # ---- store ---------------------------------------------------------------------------------

    async def astore_many(
        self,
        keys: Sequence[Any],
        values: Sequence[Any],
        expiration_time: float | Sequence[float],
        subkeys: Sequence[Any] | None = None,
    ) -> dict[Any, bool]:
        """Store several values at once (one bulk lookup); maps each (key, subkey) to success."""
        node = self._require_node()
        if len(values) != len(keys) or (subkeys is not None and len(subkeys) != len(keys)):
            raise ValueError("keys, values and subkeys must have the same length")
        expirations = (
            [expiration_time] * len(keys)
            if isinstance(expiration_time, (int, float))
            else list(expiration_time)
        )
        if len(expirations) != len(keys):
            raise ValueError("expiration_time must be one number or one per key")
        subkeys = list(subkeys) if subkeys is not None else [None] * len(keys)
        records = [
            node.make_record(k, s, v, e)
            for k, s, v, e in zip(keys, subkeys, values, expirations, strict=False)
        ]
        outcome = await node.store_records(records)
        return {
            (key if subkey is None else (key, subkey)): ok
            for key, subkey, ok in zip(keys, subkeys, outcome, strict=False)
        }

    def store_many(self, keys, values, expiration_time, subkeys=None) -> dict[Any, bool]:
        return run_coroutine(self.astore_many(keys, values, expiration_time, subkeys))

    async def astore(self, key: Any, value: Any, expiration_time: float, subkey: Any = None) -> bool:
        """Store `value` under `key` (and `subkey`) until `expiration_time` (DHT time); True on success."""
        result = await self.astore_many([key], [value], expiration_time, [subkey])
        return next(iter(result.values()))

    def store(self, key: Any, value: Any, expiration_time: float, subkey: Any = None) -> bool:
        return run_coroutine(self.astore(key, value, expiration_time, subkey))

    # ---- get -----------------------------------------------------------------------------------

    async def aget_many(
        self, keys: Sequence[Any], latest: bool = False
    ) -> dict[Any, ValueWithExpiration | None]:
        """Look up several keys in one bulk traversal."""
        return await self._require_node().get_many(list(keys), latest=latest)

    def get_many(self, keys: Sequence[Any], latest: bool = False) -> dict[Any, ValueWithExpiration | None]:
        return run_coroutine(self.aget_many(keys, latest))

    async def aget(self, key: Any, latest: bool = False) -> ValueWithExpiration | None:
        """The value under `key`, or None. With `latest`, ask every nearest replica for the newest."""
        return (await self.aget_many([key], latest))[key]

    def get(self, key: Any, latest: bool = False) -> ValueWithExpiration | None:
        return run_coroutine(self.aget(key, latest))

    # ---- advanced ------------------------------------------------------------------------------

    def run_coroutine(
        self, function: Callable[[DHT, DHTNode], Awaitable[T]], timeout: float | None = None
    ) -> T:
        """Run `await function(dht, node)` on the peer event loop and return its result."""
        node = self._require_node()

        async def call() -> T:
            return await function(self, node)

        return run_coroutine(call(), timeout)

    def __repr__(self) -> str:
        state = f"{self.node.peer_id}" if self.node else "stopped"
        return f"DHT({state})"
