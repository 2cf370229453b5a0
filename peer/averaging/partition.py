"""Pure helpers of the butterfly all-reduce: who reduces which span, chunking, flat buffers, schemas.

All tensors of an averager are viewed as one flat vector (float32, or float64 when any tensor is
float64). `split_part_sizes` cuts it into one contiguous part per group member, sized in proportion
to each member's declared bandwidth; client-mode members get empty parts. Each part is streamed in
chunks of at most `chunk_size` elements (`chunk_spans`). Every member computes the same layout
from the same group description, so no layout travels on the wire.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from peer.compression.base import FLOAT_DTYPES, CompressionBase


def split_part_sizes(total: int, bandwidths: Sequence[float], client_modes: Sequence[bool]) -> list[int]:
    """Sizes of the parts (summing to `total`), proportional to bandwidth, zero for client-mode peers.

    Rounding is by largest remainder with ties to the lower index, so every peer gets the same answer.
    """
    if total < 0:
        raise ValueError(f"total: expected a non-negative int, got {total}")
    if len(bandwidths) != len(client_modes):
        raise ValueError("bandwidths and client_modes must have one entry per member")
    for bandwidth in bandwidths:
        if not math.isfinite(bandwidth) or bandwidth <= 0:
            raise ValueError(f"bandwidths: expected positive finite numbers, got {bandwidth!r}")
    weights = [0.0 if client else float(b) for b, client in zip(bandwidths, client_modes, strict=True)]
    weight_sum = sum(weights)
    if weight_sum == 0:
        raise ValueError("client_modes: at least one member must reduce (not be in client mode)")
    exact = [total * w / weight_sum for w in weights]
    sizes = [math.floor(x) for x in exact]
    remainder = total - sum(sizes)
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in order:
        if remainder <= 0:
            break
        if weights[i] > 0:
            sizes[i] += 1
            remainder -= 1
    return sizes


def part_spans(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) of each part in the flat vector."""
    spans, start = [], 0
    for size in sizes:
        spans.append((start, start + size))
        start += size
    return spans


def chunk_spans(start: int, end: int, chunk_size: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk of the span [start, end), at most `chunk_size` elements each."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size}")
    return [(s, min(s + chunk_size, end)) for s in range(start, end, chunk_size)]


def flat_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """The dtype averaging computes in: float64 if any tensor is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def check_tensors(tensors: Sequence[torch.Tensor]) -> None:
    """Raise `TypeError`/`ValueError` naming `tensors` unless they can be averaged."""
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise ValueError("tensors: expected a non-empty list or tuple of tensors")
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensors[{i}]: expected a torch.Tensor, got {type(tensor)}")
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"tensors[{i}]: only floating tensors can be averaged, got {tensor.dtype}")


class FlatBuffer:
    """One flat vector that mirrors a list of tensors, allocated once and reused every round."""

    def __init__(self, tensors: Sequence[torch.Tensor]):
        check_tensors(tensors)
        self.numel = sum(t.numel() for t in tensors)
        self.flat = torch.empty(self.numel, dtype=flat_dtype(tensors))

    def load(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Copy `tensors` into the flat vector and return it."""
        offset = 0
        for tensor in tensors:
            n = tensor.numel()
            self.flat[offset : offset + n].copy_(tensor.detach().reshape(-1))
            offset += n
        return self.flat

    def store(self, tensors: Sequence[torch.Tensor]) -> None:
        """Copy the flat vector back into `tensors`, in place."""
        offset = 0
        with torch.no_grad():
            for tensor in tensors:
                n = tensor.numel()
                tensor.copy_(self.flat[offset : offset + n].view(tensor.shape))
                offset += n


def schema_hash(tensors: Sequence[torch.Tensor], compression: CompressionBase, chunk_size: int) -> bytes:
    """16 bytes that differ between averagers that must never share a group."""
    description = [(tuple(t.shape), str(t.dtype)) for t in tensors]
    text = repr((description, type(compression).__name__, repr(compression), chunk_size))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


@dataclass(frozen=True)
class GroupMember:
    """One member of an all-reduce group, as the leader announced it."""

    peer_id: str  # base58
    maddrs: tuple[str, ...] = ()
    bandwidth: float = 1.0
    client_mode: bool = False
    gather: bytes = b""


@dataclass(frozen=True)
class GroupInfo:
    """A formed group: its id and its members in reduction order (part i belongs to member i)."""

    group_id: bytes
    members: tuple[GroupMember, ...]

    def __post_init__(self) -> None:
        if len(self.members) < 1:
            raise ValueError("members: a group needs at least one member")
        ids = [m.peer_id for m in self.members]
        if len(set(ids)) != len(ids):
            raise ValueError("members: a peer appears twice")
        if all(m.client_mode for m in self.members):
            raise ValueError("members: at least one member must reduce (not be in client mode)")

    @property
    def peer_ids(self) -> list[str]:
        return [m.peer_id for m in self.members]

    def index_of(self, peer_id: str) -> int:
        for i, member in enumerate(self.members):
            if member.peer_id == peer_id:
                return i
        raise ValueError(f"peer_id: {peer_id} is not a member of this group")

    def part_sizes(self, total: int) -> list[int]:
        return split_part_sizes(
            total, [m.bandwidth for m in self.members], [m.client_mode for m in self.members]
        )
