"""Vectorized pure-torch 8-bit kernels, run slab by slab so temporaries stay in cache.

A 16M-element tensor is processed in slabs of `SLAB_ELEMENTS` values: each slab's float32
temporary (4 MiB) is reused, so every elementwise step after the first runs in cache and the only
large allocations are the input and the output. That is what keeps these kernels above 1 GB/s on
two cores (a naive `((x * s) + o).to(torch.uint8)` allocates three full-size temporaries).

Two affine maps, each with its quantizer and dequantizer:

- blockwise: `q = floor(x * inv[b] + 127.5)` and `x = (q - 127) * scale[b]`, per block `b` of
  `blocksize` consecutive values (the last block may be shorter);
- range: `q = floor(clamp((x - lo) * inv + 0.5, 0, 255))` and `x = q * step + lo`, one `lo`/`step`
  for the whole tensor.

Every function takes flat, contiguous CPU tensors (any float dtype in, `uint8` out and back) and
writes into a caller-allocated output, so the caller can place it in memory it will send.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = [
    "SLAB_ELEMENTS",
    "block_absmax",
    "block_amax",
    "dequantize_blocks",
    "dequantize_range",
    "quantize_blocks",
    "quantize_range",
]

SLAB_ELEMENTS = 1 << 20


def _slabs(numel: int, blocksize: int = 1) -> Iterator[tuple[int, int]]:
    """(start, stop) pairs covering range(numel); every slab but the last is a multiple of blocksize."""
    step = max(blocksize, SLAB_ELEMENTS // blocksize * blocksize)
    for start in range(0, numel, step):
        yield start, min(start + step, numel)


def _per_block(values: torch.Tensor, blocksize: int, reduce) -> torch.Tensor:
    """`reduce(view, dim=1)` over each block of a flat tensor, as a float32 vector of ceil(n / bs)."""
    numel = values.numel()
    full = numel // blocksize * blocksize
    parts = []
    if full:
        parts.append(reduce(values[:full].view(-1, blocksize), dim=1))
    if full < numel:
        parts.append(reduce(values[full:].view(1, -1), dim=1))
    if not parts:
        return torch.empty(0, dtype=torch.float32)
    return torch.cat(parts).to(torch.float32)


def block_amax(values: torch.Tensor, blocksize: int) -> torch.Tensor:
    """The largest value of each block; NaN where a block holds a NaN."""
    return _per_block(values, blocksize, torch.amax)


def block_absmax(values: torch.Tensor, blocksize: int) -> torch.Tensor:
    """The largest magnitude of each block; NaN where a block holds a NaN, inf where it holds an inf."""
    return torch.maximum(block_amax(values, blocksize), _per_block(values, blocksize, torch.amin).neg_())


def quantize_blocks(
    values: torch.Tensor, out: torch.Tensor, inv: torch.Tensor, blocksize: int, *, fix_nan: bool = False
) -> None:
    """`out = floor(values * inv[block] + 127.5)`; with `fix_nan`, non-finite results become 127."""
    tmp = torch.empty(min(values.numel(), SLAB_ELEMENTS + blocksize), dtype=torch.float32)
    for start, stop in _slabs(values.numel(), blocksize):
        rows, tail = divmod(stop - start, blocksize)
        first_block = start // blocksize
        if rows:
            torch.mul(
                values[start : start + rows * blocksize].view(rows, blocksize),
                inv[first_block : first_block + rows, None],
                out=tmp[: rows * blocksize].view(rows, blocksize),
            )
        if tail:  # the last, shorter block; inv[-1:] keeps float32 arithmetic for half inputs
            torch.mul(values[stop - tail : stop], inv[-1:], out=tmp[rows * blocksize : stop - start])
        slab = tmp[: stop - start]
        slab.add_(127.5)
        if fix_nan:
            slab.nan_to_num_(nan=127.5, posinf=127.5, neginf=127.5)
        out[start:stop].copy_(slab)


def dequantize_blocks(codes: torch.Tensor, out: torch.Tensor, scale: torch.Tensor, blocksize: int) -> None:
    """`out = (codes - 127) * scale[block]`, computed in float32 and stored in `out`'s dtype."""
    direct = out.dtype == torch.float32
    tmp = None if direct else torch.empty(min(codes.numel(), SLAB_ELEMENTS + blocksize))
    for start, stop in _slabs(codes.numel(), blocksize):
        slab = out[start:stop] if tmp is None else tmp[: stop - start]
        slab.copy_(codes[start:stop]).sub_(127.0)
        rows, tail = divmod(stop - start, blocksize)
        first_block = start // blocksize
        if rows:
            slab[: rows * blocksize].view(rows, blocksize).mul_(scale[first_block : first_block + rows, None])
        if tail:
            slab[rows * blocksize :].mul_(scale[-1:])
        if tmp is not None:
            out[start:stop].copy_(slab)


def quantize_range(values: torch.Tensor, out: torch.Tensor, lo: float, inv: float) -> None:
    """`out = floor(clamp((values - lo) * inv + 0.5, 0, 255))`."""
    tmp = torch.empty(min(values.numel(), SLAB_ELEMENTS), dtype=torch.float32)
    for start, stop in _slabs(values.numel()):
        slab = tmp[: stop - start]
        if values.dtype == torch.float32:
            torch.sub(values[start:stop], lo, out=slab)
        else:  # convert first: a Python scalar would keep half-precision arithmetic
            slab.copy_(values[start:stop]).sub_(lo)
        slab.mul_(inv).add_(0.5).clamp_(0.0, 255.0)
        out[start:stop].copy_(slab)


def dequantize_range(codes: torch.Tensor, out: torch.Tensor, lo: float, step: float) -> None:
    """`out = codes * step + lo`, computed in float32 and stored in `out`'s dtype."""
    direct = out.dtype == torch.float32
    tmp = None if direct else torch.empty(min(codes.numel(), SLAB_ELEMENTS))
    for start, stop in _slabs(codes.numel()):
        slab = out[start:stop] if tmp is None else tmp[: stop - start]
        slab.copy_(codes[start:stop]).mul_(step).add_(lo)
        if tmp is not None:
            out[start:stop].copy_(slab)
