"""The Kademlia DHT: pure parts (no I/O) that the async node, protocol and `peer.DHT` build on.

    peer.dht.routing      DHTID (160-bit ids, XOR distance), KBucket, RoutingTable (k = K_VALUE)
    peer.dht.blacklist    Blacklist: exponential-backoff bans of peers that time out
    peer.dht.query        ClosestPeersQuery: the bulk iterative lookup, a state machine (ALPHA_VALUE)
    peer.dht.storage      DHTLocalStorage: values and dictionary subkeys with expiration, abuse limits
    peer.dht.validation   RecordValidator, SignatureValidator (owner markers), SchemaValidator (pydantic)

Every piece takes the clock (`now`, DHT time in float seconds) as an argument.
"""

from peer.dht.blacklist import Blacklist
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
    "DHTID",
    "ID_BITS",
    "K_VALUE",
    "AddResult",
    "AddStatus",
    "Blacklist",
    "ClosestPeersQuery",
    "CompositeValidator",
    "DHTLocalStorage",
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
    "owner_marker",
    "record_owner",
    "serialize_key",
    "sign_value",
]
