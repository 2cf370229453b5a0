"""hivemind-platform's peer library: everything on the training path.

    peer.runs         run manifests, recipes, datasets, the `join` session
    peer.optim        the collaborative Optimizer (gradient averaging or DiLoCo) and progress records
    peer.averaging    Moshpit averaging: matchmaking, butterfly all-reduce, state sharing
    peer.moe          decentralized Mixture-of-Experts: expert server and remote experts
    peer.compression  tensor codecs and their wire form
    peer.dht          the Kademlia DHT: routing, lookups, signed records, `DHT`
    peer.net          identity, multiaddrs, the Noise secure channel, multiplexed RPC, connection pool
    peer.proto        protobuf schemas and their generated code
    peer.errors       the error tree
    peer.utils        the shared background event loop
    peer.cli          the `hivemind-peer` command

The public API is re-exported here; `tests/test_exported_members.py` pins `__all__`.
"""

from importlib.metadata import PackageNotFoundError, version

from peer.averaging import DecentralizedAverager
from peer.dht import DHT, get_dht_time
from peer.errors import PeerError
from peer.net.identity import Identity, PeerID
from peer.net.multiaddr import Multiaddr
from peer.optim import Optimizer

try:
    __version__ = version("hivemind-platform")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = [
    "DHT",
    "DecentralizedAverager",
    "Identity",
    "Multiaddr",
    "Optimizer",
    "PeerError",
    "PeerID",
    "__version__",
    "get_dht_time",
]
