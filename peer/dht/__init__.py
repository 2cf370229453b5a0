"""The Kademlia DHT: pure parts (no I/O) that the async node, protocol and `peer.DHT` build on.

    peer.dht.routing      DHTID (160-bit ids, XOR distance), KBucket, RoutingTable (k = K_VALUE)
    peer.dht.blacklist    Blacklist: exponential-backoff bans of peers that time out
    peer.dht.query        ClosestPeersQuery: the bulk iterative lookup, a state machine (ALPHA_VALUE)
    peer.dht.storage      DHTLocalStorage: values and dictionary subkeys with expiration, abuse limits
    peer.dht.validation   RecordValidator, SignatureValidator (owner markers), SchemaValidator (pydantic)
    peer.dht.protocol     the dht.ping/store/find RPCs (call_x / rpc_x pairs); the only protobuf user
    peer.dht.node         DHTNode: the async driver (lookups, store, get, caching, maintenance)
    peer.dht.dht          DHT: the public blocking + async facade (DESIGN's `peer.DHT`)

Every piece takes the clock (`now`, DHT time in float seconds) as an argument.
"""

from peer.dht.blacklist import Blacklist
from peer.dht.dht import DHT
from peer.dht.node import DHTConfig, DHTNode, get_dht_time
from peer.dht.query import (
    ALPHA_VALUE,
    ClosestPeersQuery,
    LookupResult,
    QueryMode,
    QueryRequest,
    QueryStep,
)
from peer.dht.routing import (
    DEPTH_MODULO,
    DHTID,
    ID_BITS,
    K_VALUE,
    AddResult,
    AddStatus,
    KBucket,
    NodeInfo,
    RoutingTable,
    serialize_key,
)
from peer.dht.storage import (
    DHTLocalStorage,
    DictionaryValue,
    StorageLimits,
    StoredValue,
    StoreStatus,
    ValueWithExpiration,
)
from peer.dht.validation import (
    CompositeValidator,
    DHTRecord,
    InvalidRecordError,
    RecordValidator,
    SchemaValidator,
    SignatureValidator,
    owner_marker,
    record_owner,
    sign_value,
)

__all__ = [
    "ALPHA_VALUE",
    "DEPTH_MODULO",
    "DHT",
    "DHTID",
    "ID_BITS",
    "K_VALUE",
    "AddResult",
    "AddStatus",
    "Blacklist",
    "ClosestPeersQuery",
    "CompositeValidator",
    "DHTConfig",
    "DHTLocalStorage",
    "DHTNode",
    "DHTRecord",
    "DictionaryValue",
    "InvalidRecordError",
    "KBucket",
    "LookupResult",
    "NodeInfo",
    "QueryMode",
    "QueryRequest",
    "QueryStep",
    "RecordValidator",
    "RoutingTable",
    "SchemaValidator",
    "SignatureValidator",
    "StorageLimits",
    "StoreStatus",
    "StoredValue",
    "ValueWithExpiration",
    "get_dht_time",
    "owner_marker",
    "record_owner",
    "serialize_key",
    "sign_value",
]
