"""The transport: identity, addresses, the Noise secure channel, multiplexed RPC and the pool.

    identity     Ed25519 key files (mode 0600) and libp2p PeerIDs
    multiaddr    /ip4/.../tcp/.../p2p/<id> addresses, with room for /p2p-circuit relays
    noise        the Noise XX handshake state machine (pure, no I/O)
    handshake    hello + Noise XX + identity binding + the authorizer's verdict, over a socket
    auth         the `Authorizer` hook; tokens.py holds the access-token format
    record       AES-GCM records after the handshake
    frames       multiplexer frames inside records (pure parser, fuzzed)
    connection   one secure TCP connection: records in, frames out, streams dispatched
    stream       one flow-controlled stream of a connection
    rpc          named, versioned calls on streams: messages, tensors, status, deadlines
    pool         one connection per remote peer, shared dials, the address book, idle closing
    p2p          `P2P`: the facade that listens, dials and serves RPC
    protocol     wire constants and the only module that touches the generated protobuf classes
    config       `TransportConfig`: limits and timeouts

The wire format is specified in docs/protocol.md.
"""

from peer.net.auth import AllowAll, Authorizer
from peer.net.config import TransportConfig
from peer.net.identity import Identity, PeerID
from peer.net.multiaddr import Multiaddr
from peer.net.p2p import P2P
from peer.net.protocol import TensorHeader
from peer.net.rpc import RPCStream

__all__ = [  # noqa: RUF022 (plain sorted order, as tests/test_exported_members.py checks)
    "AllowAll",
    "Authorizer",
    "Identity",
    "Multiaddr",
    "P2P",
    "PeerID",
    "RPCStream",
    "TensorHeader",
    "TransportConfig",
]
