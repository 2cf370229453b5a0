from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LeaderCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEADER_CODE_UNSPECIFIED: _ClassVar[LeaderCode]
    ACCEPTED: _ClassVar[LeaderCode]
    BEGIN: _ClassVar[LeaderCode]
    REJECTED: _ClassVar[LeaderCode]
    DISBANDED: _ClassVar[LeaderCode]
LEADER_CODE_UNSPECIFIED: LeaderCode
ACCEPTED: LeaderCode
BEGIN: LeaderCode
REJECTED: LeaderCode
DISBANDED: LeaderCode

class JoinRequest(_message.Message):
    __slots__ = ("group_key", "schema_hash", "deadline", "bandwidth", "client_mode", "maddrs", "gather")
    GROUP_KEY_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_HASH_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MODE_FIELD_NUMBER: _ClassVar[int]
    MADDRS_FIELD_NUMBER: _ClassVar[int]
    GATHER_FIELD_NUMBER: _ClassVar[int]
    group_key: str
    schema_hash: bytes
    deadline: float
    bandwidth: float
    client_mode: bool
    maddrs: _containers.RepeatedScalarFieldContainer[str]
    gather: bytes
    def __init__(self, group_key: _Optional[str] = ..., schema_hash: _Optional[bytes] = ..., deadline: _Optional[float] = ..., bandwidth: _Optional[float] = ..., client_mode: _Optional[bool] = ..., maddrs: _Optional[_Iterable[str]] = ..., gather: _Optional[bytes] = ...) -> None: ...

class LeaderMessage(_message.Message):
    __slots__ = ("code", "reason", "group")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    code: LeaderCode
    reason: str
    group: Group
    def __init__(self, code: _Optional[_Union[LeaderCode, str]] = ..., reason: _Optional[str] = ..., group: _Optional[_Union[Group, _Mapping]] = ...) -> None: ...

class GroupMember(_message.Message):
    __slots__ = ("peer_id", "maddrs", "bandwidth", "client_mode", "gather")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    MADDRS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MODE_FIELD_NUMBER: _ClassVar[int]
    GATHER_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    maddrs: _containers.RepeatedScalarFieldContainer[str]
    bandwidth: float
    client_mode: bool
    gather: bytes
    def __init__(self, peer_id: _Optional[str] = ..., maddrs: _Optional[_Iterable[str]] = ..., bandwidth: _Optional[float] = ..., client_mode: _Optional[bool] = ..., gather: _Optional[bytes] = ...) -> None: ...

class Group(_message.Message):
    __slots__ = ("group_id", "members")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    group_id: bytes
    members: _containers.RepeatedCompositeFieldContainer[GroupMember]
    def __init__(self, group_id: _Optional[bytes] = ..., members: _Optional[_Iterable[_Union[GroupMember, _Mapping]]] = ...) -> None: ...

class ReduceRequest(_message.Message):
    __slots__ = ("group_id", "weight")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    group_id: bytes
    weight: float
    def __init__(self, group_id: _Optional[bytes] = ..., weight: _Optional[float] = ...) -> None: ...

class StateRequest(_message.Message):
    __slots__ = ("schema_hash",)
    SCHEMA_HASH_FIELD_NUMBER: _ClassVar[int]
    schema_hash: bytes
    def __init__(self, schema_hash: _Optional[bytes] = ...) -> None: ...

class StateHeader(_message.Message):
    __slots__ = ("metadata", "num_tensors")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    metadata: bytes
    num_tensors: int
    def __init__(self, metadata: _Optional[bytes] = ..., num_tensors: _Optional[int] = ...) -> None: ...
