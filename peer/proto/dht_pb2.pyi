from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeInfo(_message.Message):
    __slots__ = ("peer_id", "maddrs", "client_mode")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    MADDRS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MODE_FIELD_NUMBER: _ClassVar[int]
    peer_id: bytes
    maddrs: _containers.RepeatedScalarFieldContainer[str]
    client_mode: bool
    def __init__(self, peer_id: _Optional[bytes] = ..., maddrs: _Optional[_Iterable[str]] = ..., client_mode: _Optional[bool] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("sender",)
    SENDER_FIELD_NUMBER: _ClassVar[int]
    sender: NodeInfo
    def __init__(self, sender: _Optional[_Union[NodeInfo, _Mapping]] = ...) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("responder", "dht_time")
    RESPONDER_FIELD_NUMBER: _ClassVar[int]
    DHT_TIME_FIELD_NUMBER: _ClassVar[int]
    responder: NodeInfo
    dht_time: float
    def __init__(self, responder: _Optional[_Union[NodeInfo, _Mapping]] = ..., dht_time: _Optional[float] = ...) -> None: ...

class StoreItem(_message.Message):
    __slots__ = ("key", "subkey", "has_subkey", "value", "expiration_time")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SUBKEY_FIELD_NUMBER: _ClassVar[int]
    HAS_SUBKEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_TIME_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    subkey: bytes
    has_subkey: bool
    value: bytes
    expiration_time: float
    def __init__(self, key: _Optional[bytes] = ..., subkey: _Optional[bytes] = ..., has_subkey: _Optional[bool] = ..., value: _Optional[bytes] = ..., expiration_time: _Optional[float] = ...) -> None: ...

class StoreRequest(_message.Message):
    __slots__ = ("sender", "items", "in_cache")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    IN_CACHE_FIELD_NUMBER: _ClassVar[int]
    sender: NodeInfo
    items: _containers.RepeatedCompositeFieldContainer[StoreItem]
    in_cache: bool
    def __init__(self, sender: _Optional[_Union[NodeInfo, _Mapping]] = ..., items: _Optional[_Iterable[_Union[StoreItem, _Mapping]]] = ..., in_cache: _Optional[bool] = ...) -> None: ...

class StoreResult(_message.Message):
    __slots__ = ("status", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: int
    message: str
    def __init__(self, status: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StoreResponse(_message.Message):
    __slots__ = ("responder", "results")
    RESPONDER_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    responder: NodeInfo
    results: _containers.RepeatedCompositeFieldContainer[StoreResult]
    def __init__(self, responder: _Optional[_Union[NodeInfo, _Mapping]] = ..., results: _Optional[_Iterable[_Union[StoreResult, _Mapping]]] = ...) -> None: ...

class FindRequest(_message.Message):
    __slots__ = ("sender", "key_ids")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    sender: NodeInfo
    key_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, sender: _Optional[_Union[NodeInfo, _Mapping]] = ..., key_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DictionaryEntry(_message.Message):
    __slots__ = ("subkey", "value", "expiration_time")
    SUBKEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_TIME_FIELD_NUMBER: _ClassVar[int]
    subkey: bytes
    value: bytes
    expiration_time: float
    def __init__(self, subkey: _Optional[bytes] = ..., value: _Optional[bytes] = ..., expiration_time: _Optional[float] = ...) -> None: ...

class FindResult(_message.Message):
    __slots__ = ("found", "is_dictionary", "value", "expiration_time", "entries", "nearest", "partial")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    IS_DICTIONARY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_TIME_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEAREST_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    found: bool
    is_dictionary: bool
    value: bytes
    expiration_time: float
    entries: _containers.RepeatedCompositeFieldContainer[DictionaryEntry]
    nearest: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    partial: bool
    def __init__(self, found: _Optional[bool] = ..., is_dictionary: _Optional[bool] = ..., value: _Optional[bytes] = ..., expiration_time: _Optional[float] = ..., entries: _Optional[_Iterable[_Union[DictionaryEntry, _Mapping]]] = ..., nearest: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., partial: _Optional[bool] = ...) -> None: ...

class FindResponse(_message.Message):
    __slots__ = ("responder", "results")
    RESPONDER_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    responder: NodeInfo
    results: _containers.RepeatedCompositeFieldContainer[FindResult]
    def __init__(self, responder: _Optional[_Union[NodeInfo, _Mapping]] = ..., results: _Optional[_Iterable[_Union[FindResult, _Mapping]]] = ...) -> None: ...
