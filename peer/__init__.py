"""hivemind-platform's peer library: everything on the training path.

    peer.dht          the Kademlia DHT: routing, lookups, signed records, `DHT`
    peer.compression  tensor codecs and their wire form
    peer.net          identity, multiaddrs, the Noise secure channel, multiplexed RPC, connection pool
    peer.proto        protobuf schemas and their generated code
    peer.errors       the error tree
    peer.utils        the shared background event loop

The public API is re-exported here; `tests/test_exported_members.py` pins `__all__`.
"""

from peer.dht import DHT, get_dht_time
from peer.errors import PeerError
from peer.net.identity import Identity, PeerID
from peer.net.multiaddr import Multiaddr

__all__ = ["DHT", "Identity", "Multiaddr", "PeerError", "PeerID", "get_dht_time"]
