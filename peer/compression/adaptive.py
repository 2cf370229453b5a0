"""Codecs that pick another codec per tensor: by size, or by role.

Selectors only choose; the `EncodedTensor` they return carries the chosen codec's id, so the
receiver decodes it with `peer.compression.decode` and never needs to know the selection policy.

    SizeAdaptiveCompression(threshold=2**16, less=Float16Compression(),
                            greater_equal=BlockwiseQuantization())
        tensors with `info.size < threshold` use `less`, the others `greater_equal`
    RoleAdaptiveCompression(gradient=..., parameter=..., optimizer=..., activation=...,
                            default=NoCompression())
        each `TensorRole` gets its own codec; a role given no codec uses `default`

Selection reads `CompressionInfo.size`, the size of the *whole* tensor, so every chunk of a tensor
the averager cuts up gets the same codec; without an info, the encoded tensor itself is measured.
Selectors nest: a role may map to a `SizeAdaptiveCompression`.
"""

from __future__ import annotations

import abc

import torch

from peer.compression.base import CompressionBase, CompressionInfo, NoCompression, TensorRole
from peer.compression.blockwise import BlockwiseQuantization
from peer.compression.floating import Float16Compression
from peer.compression.serialization import EncodedTensor

__all__ = ["AdaptiveCompressionBase", "RoleAdaptiveCompression", "SizeAdaptiveCompression"]


def _check_codec(name: str, codec: object) -> CompressionBase:
    if not isinstance(codec, CompressionBase):
        raise TypeError(f"{name}: expected a codec (CompressionBase), got {codec!r}")
    return codec


class AdaptiveCompressionBase(CompressionBase):
    """A codec that delegates each tensor to the codec `choose(info)` returns."""

    @abc.abstractmethod
    def choose(self, info: CompressionInfo) -> CompressionBase:
        """The codec for a tensor described by `info` (it may be a selector itself)."""

    def select(self, info: CompressionInfo) -> CompressionBase:
        """The concrete codec (never a selector) that will encode a tensor described by `info`."""
        codec = self.choose(info)
        return codec.select(info) if isinstance(codec, AdaptiveCompressionBase) else codec

    def encode(self, tensor: torch.Tensor, info: CompressionInfo | None = None) -> EncodedTensor:
        if info is None:
            info = CompressionInfo.from_tensor(tensor)
        elif not isinstance(info, CompressionInfo):
            raise TypeError(f"info: expected a CompressionInfo or None, got {type(info)}")
        return self.select(info).encode(tensor, info)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return self.select(info).estimate_compression_ratio(info)


class SizeAdaptiveCompression(AdaptiveCompressionBase):
    """`less` below `threshold` elements, `greater_equal` from it on."""

    def __init__(
        self,
        threshold: int = 2**16,
        less: CompressionBase | None = None,
        greater_equal: CompressionBase | None = None,
    ):
        if isinstance(threshold, bool) or not isinstance(threshold, int):
            raise TypeError(f"threshold: expected an int, got {type(threshold)}")
        if threshold < 0:
            raise ValueError(f"threshold: expected a non-negative int, got {threshold}")
        self.threshold = threshold
        self.less = _check_codec("less", less if less is not None else Float16Compression())
        self.greater_equal = _check_codec(
            "greater_equal", greater_equal if greater_equal is not None else BlockwiseQuantization()
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(threshold={self.threshold}, less={self.less!r}, "
            f"greater_equal={self.greater_equal!r})"
        )

    def choose(self, info: CompressionInfo) -> CompressionBase:
        return self.less if info.size < self.threshold else self.greater_equal


class RoleAdaptiveCompression(AdaptiveCompressionBase):
    """One codec per `TensorRole`; roles without one (and `UNSPECIFIED`) use `default`."""

    def __init__(
        self,
        *,
        gradient: CompressionBase | None = None,
        parameter: CompressionBase | None = None,
        optimizer: CompressionBase | None = None,
        activation: CompressionBase | None = None,
        default: CompressionBase | None = None,
    ):
        self.default = _check_codec("default", default if default is not None else NoCompression())
        given = {
            TensorRole.GRADIENT: ("gradient", gradient),
            TensorRole.PARAMETER: ("parameter", parameter),
            TensorRole.OPTIMIZER: ("optimizer", optimizer),
            TensorRole.ACTIVATION: ("activation", activation),
        }
        self.by_role: dict[TensorRole, CompressionBase] = {
            role: _check_codec(name, codec) for role, (name, codec) in given.items() if codec is not None
        }

    def __repr__(self) -> str:
        roles = ", ".join(f"{role.value}={codec!r}" for role, codec in self.by_role.items())
        return f"{type(self).__name__}({roles}{', ' if roles else ''}default={self.default!r})"

    def choose(self, info: CompressionInfo) -> CompressionBase:
        return self.by_role.get(info.role, self.default)
