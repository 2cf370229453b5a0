"""What every codec shares: `CompressionBase`, `CompressionInfo`, `TensorRole`, the decoder registry.

A codec turns a tensor into an `EncodedTensor` (`encode`) and back (`decode`). Decoding needs nothing
but the `EncodedTensor`: every parameter the decoder needs (scales, block size) travels in its
`meta`, so any peer decodes any codec, whatever codec object it was configured with. The module-level
`decode()` dispatches on the codec id through the registry that each codec module fills.

`NoCompression` lives here: it sends the tensor's own bytes. It accepts every dtype with a wire name
(floats, ints, bool) and is exact, NaN and inf included. Its payload is a view of the input's memory
when the input is a contiguous CPU tensor: do not modify the tensor until the payload is sent
(encode `tensor.clone()` if you must). Decoding a writable payload returns a tensor over that same
memory; a read-only payload (`bytes`) is copied once.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Hashable
from typing import ClassVar

import torch

from peer.compression.serialization import (
    DTYPE_NAMES,
    CodecID,
    EncodedTensor,
    buffer_to_tensor,
    tensor_to_buffer,
)

__all__ = [
    "FLOAT_DTYPES",
    "CompressionBase",
    "CompressionInfo",
    "NoCompression",
    "TensorRole",
    "decode",
    "get_codec",
    "register_codec",
]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
"""The dtypes the lossy codecs accept; they compute in float32 and decode to the original dtype."""


class TensorRole(enum.Enum):
    """What a tensor is for; `RoleAdaptiveCompression` picks a codec per role."""

    ACTIVATION = "activation"
    PARAMETER = "parameter"
    GRADIENT = "gradient"
    OPTIMIZER = "optimizer"  # optimizer state: moments, accumulators
    UNSPECIFIED = "unspecified"


@dataclasses.dataclass(frozen=True)
class CompressionInfo:
    """What a codec may know about the tensor it encodes, beyond its values.

    `size` is the element count of the *whole* tensor, also when only a part of it is encoded: the
    averager cuts a flat tensor into parts and chunks, and every chunk of one tensor should get the
    same codec. `part_index`/`part_size` say which chunk this is (informational).
    """

    size: int
    role: TensorRole = TensorRole.UNSPECIFIED
    key: Hashable | None = None
    part_index: int = 0
    part_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise ValueError(f"size: expected a non-negative int, got {self.size!r}")
        if not isinstance(self.role, TensorRole):
            raise TypeError(f"role: expected a TensorRole, got {self.role!r}")
        if not isinstance(self.part_index, int) or self.part_index < 0:
            raise ValueError(f"part_index: expected a non-negative int, got {self.part_index!r}")
        if self.part_size is not None and (not isinstance(self.part_size, int) or self.part_size < 0):
            raise ValueError(f"part_size: expected a non-negative int or None, got {self.part_size!r}")

    @classmethod
    def from_tensor(
        cls, tensor: torch.Tensor, *, role: TensorRole = TensorRole.UNSPECIFIED, key: Hashable | None = None
    ) -> CompressionInfo:
        """The info of a whole tensor."""
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor: expected a torch.Tensor, got {type(tensor)}")
        return cls(size=tensor.numel(), role=role, key=key)

    def for_part(self, part_index: int, part_size: int) -> CompressionInfo:
        """The same info for one chunk of the tensor."""
        return dataclasses.replace(self, part_index=part_index, part_size=part_size)


class CompressionBase(abc.ABC):
    """A codec: `encode(tensor, info) -> EncodedTensor` and `decode(encoded) -> torch.Tensor`.

    Concrete codecs set `codec_id` and implement both; selectors (the adaptive codecs) implement
    `encode` by delegating and leave `decode` to the registry.
    """

    codec_id: ClassVar[CodecID | None] = None

    @abc.abstractmethod
    def encode(self, tensor: torch.Tensor, info: CompressionInfo | None = None) -> EncodedTensor:
        """Encode `tensor` (any shape, any strides, CPU or CUDA). `info` defaults to the whole tensor."""

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        """Decode `encoded` to a CPU tensor of its original dtype and shape."""
        return decode(encoded)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        """Payload bytes per float32 input byte, roughly (1.0 means no saving)."""
        return 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_REGISTRY: dict[CodecID, CompressionBase] = {}


def register_codec(codec: CompressionBase) -> CompressionBase:
    """Make `codec` the decoder of its `codec_id` for `decode()`; returns it."""
    if not isinstance(codec, CompressionBase) or codec.codec_id is None:
        raise TypeError(f"codec: expected a concrete codec with a codec_id, got {codec!r}")
    _REGISTRY[codec.codec_id] = codec
    return codec


def get_codec(codec_id: CodecID | int) -> CompressionBase:
    """The registered codec for a wire codec id (raises `ValueError` for an unknown id)."""
    try:
        return _REGISTRY[CodecID(codec_id)]
    except (ValueError, KeyError):
        raise ValueError(f"codec_id: no codec is registered for {codec_id!r}") from None


def decode(encoded: EncodedTensor) -> torch.Tensor:
    """Decode any `EncodedTensor`, whatever codec made it."""
    if not isinstance(encoded, EncodedTensor):
        raise TypeError(f"encoded: expected an EncodedTensor, got {type(encoded)}")
    return get_codec(encoded.codec).decode(encoded)


def check_tensor(tensor: torch.Tensor, dtypes: tuple[torch.dtype, ...] | None = None) -> None:
    """Raise `TypeError` naming `tensor` unless it is a tensor of a supported dtype."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor: expected a torch.Tensor, got {type(tensor)}")
    allowed = dtypes if dtypes is not None else tuple(DTYPE_NAMES)
    if tensor.dtype not in allowed:
        names = ", ".join(str(dtype).removeprefix("torch.") for dtype in allowed)
        raise TypeError(f"tensor: dtype {tensor.dtype} is not supported (expected one of {names})")


def check_encoded(encoded: EncodedTensor, codec_id: CodecID, dtypes: tuple[torch.dtype, ...]) -> None:
    """Raise unless `encoded` was made by `codec_id` for one of `dtypes`."""
    if not isinstance(encoded, EncodedTensor):
        raise TypeError(f"encoded: expected an EncodedTensor, got {type(encoded)}")
    if encoded.codec != codec_id:
        raise ValueError(f"encoded: codec {encoded.codec.name} cannot be decoded as {codec_id.name}")
    if encoded.dtype not in dtypes:
        raise ValueError(f"encoded: dtype {encoded.dtype} is not valid for {codec_id.name}")


class NoCompression(CompressionBase):
    """The tensor's own bytes, exact for every dtype (see the module docstring about aliasing)."""

    codec_id = CodecID.NONE

    def encode(self, tensor: torch.Tensor, info: CompressionInfo | None = None) -> EncodedTensor:
        check_tensor(tensor)
        return EncodedTensor(
            CodecID.NONE, tensor.dtype, tuple(tensor.shape), b"", tensor_to_buffer(tensor.detach())
        )

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        check_encoded(encoded, CodecID.NONE, tuple(DTYPE_NAMES))
        if encoded.meta:
            raise ValueError(f"encoded: NONE carries no meta, got {len(encoded.meta)} bytes")
        flat = buffer_to_tensor(encoded.payload, encoded.dtype, encoded.numel)
        return flat.view(encoded.shape)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return 1.0


register_codec(NoCompression())
