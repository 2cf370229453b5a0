"""The Kademlia DHT, one layer per module. Those marked * are pure: no I/O, the clock is an argument.

    peer.dht.routing     * DHTID (160-bit ids, XOR distance), KBucket, RoutingTable (k = K_VALUE)
    peer.dht.blacklist   * Blacklist: exponential-backoff bans of peers that time out
    peer.dht.query       * ClosestPeersQuery: the bulk iterative lookup as a state machine (ALPHA_VALUE)
    peer.dht.storage     * DHTLocalStorage (expiration, subkeys, abuse limits); NodeRecords
    peer.dht.validation  * RecordValidator, SignatureValidator (owner markers), SchemaValidator
    peer.dht.reader      * RecordReader: the read path (validate, unwrap, merge replicas)
    peer.dht.caching     * plan_caching: where a reader caches what it found (Kademlia, section 2.3)
    peer.dht.config        DHTConfig, get_dht_time
    peer.dht.protocol      the dht.ping/store/find RPCs (call_x / rpc_x pairs); the only protobuf user
    peer.dht.contacts      Contacts: routing table upkeep, ping before evict, bans, peer addresses
    peer.dht.lookup        LookupDriver: runs a ClosestPeersQuery over the network
    peer.dht.jobs          maintenance: expiry, bucket refresh (also at join), republishing
    peer.dht.node          DHTNode: join, store and get on top of the layers above
    peer.dht.dht           DHT: the public blocking + async facade (DESIGN's `peer.DHT`)

The names below are the public API; the layers without exports are the node's internals.
"""

from peer.dht.blacklist import Blacklist
from peer.dht.config import DHTConfig, get_dht_time
from peer.dht.dht import DHT
from peer.dht.node import DHTNode
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
