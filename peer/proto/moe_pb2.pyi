from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExpertInfoRequest(_message.Message):
    __slots__ = ("uid",)
    UID_FIELD_NUMBER: _ClassVar[int]
    uid: str
    def __init__(self, uid: _Optional[str] = ...) -> None: ...

class TensorSchema(_message.Message):
    __slots__ = ("shape", "dtype")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class ExpertInfo(_message.Message):
    __slots__ = ("uid", "expert_cls", "args_schema", "outputs_schema", "max_batch_size")
    UID_FIELD_NUMBER: _ClassVar[int]
    EXPERT_CLS_FIELD_NUMBER: _ClassVar[int]
    ARGS_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    uid: str
    expert_cls: str
    args_schema: _containers.RepeatedCompositeFieldContainer[TensorSchema]
    outputs_schema: _containers.RepeatedCompositeFieldContainer[TensorSchema]
    max_batch_size: int
    def __init__(self, uid: _Optional[str] = ..., expert_cls: _Optional[str] = ..., args_schema: _Optional[_Iterable[_Union[TensorSchema, _Mapping]]] = ..., outputs_schema: _Optional[_Iterable[_Union[TensorSchema, _Mapping]]] = ..., max_batch_size: _Optional[int] = ...) -> None: ...

class ExpertRequest(_message.Message):
    __slots__ = ("uid", "num_tensors", "response_codec")
    UID_FIELD_NUMBER: _ClassVar[int]
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CODEC_FIELD_NUMBER: _ClassVar[int]
    uid: str
    num_tensors: int
    response_codec: int
    def __init__(self, uid: _Optional[str] = ..., num_tensors: _Optional[int] = ..., response_codec: _Optional[int] = ...) -> None: ...

class ExpertResponse(_message.Message):
    __slots__ = ("num_tensors",)
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    num_tensors: int
    def __init__(self, num_tensors: _Optional[int] = ...) -> None: ...
