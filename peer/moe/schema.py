"""`TensorSchema`: the shape (without the batch dimension) and dtype of one expert input or output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from peer.compression.serialization import DTYPE_CODES, DTYPE_NAMES
from peer.moe.errors import ExpertInputError

_DTYPES_BY_NAME = {name: dtype for dtype, name in DTYPE_NAMES.items()}


@dataclass(frozen=True)
class TensorSchema:
    """One tensor of an expert's signature: `shape` excludes the leading batch dimension."""

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if any(not isinstance(s, int) or s < 0 for s in self.shape):
            raise ValueError(f"shape must hold non-negative ints, got {self.shape}")
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"dtype {self.dtype} cannot travel on the wire")

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> TensorSchema:
        """The schema of a batched tensor (its first dimension is the batch)."""
        return cls(tuple(tensor.shape[1:]), tensor.dtype)

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    @classmethod
    def from_wire(cls, shape: Sequence[int], dtype_name: str) -> TensorSchema:
        if dtype_name not in _DTYPES_BY_NAME:
            raise ValueError(f"unknown dtype {dtype_name!r}")
        return cls(tuple(int(s) for s in shape), _DTYPES_BY_NAME[dtype_name])

    def row_nbytes(self) -> int:
        numel = 1
        for s in self.shape:
            numel *= s
        return numel * torch.empty((), dtype=self.dtype).element_size()

    def zeros(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros((batch_size, *self.shape), dtype=self.dtype, device=device)

    def check(self, shape: Sequence[int], dtype: torch.dtype | str, *, what: str) -> None:
        """Raise `ExpertInputError` unless a tensor of `shape`/`dtype` fits this schema."""
        dtype_name = dtype if isinstance(dtype, str) else DTYPE_NAMES.get(dtype, str(dtype))
        if dtype_name != self.dtype_name:
            raise ExpertInputError(f"{what} has dtype {dtype_name}, expected {self.dtype_name}")
        if len(shape) != len(self.shape) + 1 or tuple(shape[1:]) != self.shape:
            expected = ("batch", *self.shape)
            raise ExpertInputError(f"{what} has shape {tuple(shape)}, expected {expected}")


def check_batch(
    schemas: Sequence[TensorSchema], tensors: Sequence[torch.Tensor], *, max_batch_size: int, what: str
) -> int:
    """Check tensors against schemas (count, shapes, dtypes, one batch size); return the batch size."""
    if len(tensors) != len(schemas):
        raise ExpertInputError(f"{what}: got {len(tensors)} tensors, expected {len(schemas)}")
    batch_sizes = {int(t.shape[0]) if t.dim() else -1 for t in tensors}
    for i, (schema, tensor) in enumerate(zip(schemas, tensors, strict=False)):
        schema.check(tuple(tensor.shape), tensor.dtype, what=f"{what} tensor {i}")
    if len(batch_sizes) != 1:
        raise ExpertInputError(f"{what}: tensors disagree on the batch size: {sorted(batch_sizes)}")
    (batch_size,) = batch_sizes
    if not 0 < batch_size <= max_batch_size:
        raise ExpertInputError(f"{what}: batch size {batch_size} is outside 1..{max_batch_size}")
    return batch_size


__all__ = ["TensorSchema", "check_batch"]
