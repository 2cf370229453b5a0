"""The authorizer hook: which remote peers may use this peer at all.

During the secure handshake each side presents an optional access token (opaque bytes to this layer)
and checks the remote's with its `Authorizer`. A refused remote gets a GOAWAY naming the reason and
the connection closes before any RPC is read, so it reaches no handler: DHT, averaging and MoE alike.

The access-token format itself (who signs it, what it binds) lives in `peer.net.tokens`; this module
only defines the interface the transport calls.
"""

from __future__ import annotations

import abc

from peer.errors import AuthorizationError
from peer.net.identity import PeerID


class Authorizer(abc.ABC):
    """Decides whether a remote peer may talk to us, and what token we show to remote peers."""

    @abc.abstractmethod
    async def get_token(self) -> bytes | None:
        """The token to present in our handshakes (None to present none)."""

    @abc.abstractmethod
    async def check(self, remote_peer_id: PeerID, token: bytes | None) -> None:
        """Return to accept the remote; raise `AuthorizationError` with a reason to refuse it."""


class AllowAll(Authorizer):
    """Accepts every remote and presents no token: the behaviour of an open run."""

    async def get_token(self) -> bytes | None:
        return None

    async def check(self, remote_peer_id: PeerID, token: bytes | None) -> None:
        return None


__all__ = ["AllowAll", "AuthorizationError", "Authorizer"]
