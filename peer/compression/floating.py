"""16-bit float codecs: `Float16Compression` and `ScaledFloat16Compression`.

Both accept float32, float16, bfloat16 and float64 tensors and decode to the original dtype.

FLOAT16 (codec id 1)
    meta: empty. payload: the values as little-endian IEEE float16, row-major.
    Values beyond the float16 range are clamped to +-65504, so an overflow never becomes inf.
    Error: relative 2**-11 for |x| in [6.1e-5, 65504]; absolute <= 2**-25 below (float16
    subnormals). bfloat16 values inside that range round-trip exactly.
    Non-finite: NaN stays NaN; +-inf becomes +-65504 (it is indistinguishable from an overflow).

SCALED_FLOAT16 (codec id 2)
    Each *row* is standardized before the cast: `z = (x - mean) / std`, with the population std
    (floored at the smallest normal float32, so a constant row is exact). A row is a slice along the
    last dimension for tensors of 2 or more dimensions; a 0-D or 1-D tensor (and so every flat
    chunk the averager sends) is one row.
    meta: `rows` float32 means, then `rows` float32 stds (little-endian), where
    `rows = numel // shape[-1]` for ndim >= 2, 1 for ndim <= 1, and 0 for an empty tensor.
    payload: `z` as float16, row-major, clamped to +-65504.
    Decoding: `x = z * std + mean` per row.
    Error: about `2**-11 * |x - mean| + 2**-25 * std` per value; the gain over FLOAT16 is for rows
    far from zero or outside float16's range. Meta costs 8 bytes per row: use it on rows of many
    values, not on (N, 1)-shaped tensors.
    Non-finite: a row holding a NaN or +-inf (or so large its statistics overflow float32,
    |x| > ~1e18) is sent with a NaN mean and zeros, and decodes as all-NaN; other rows are intact.
"""

from __future__ import annotations

import math

import torch

from peer.compression.base import (
    FLOAT_DTYPES,
    CompressionBase,
    CompressionInfo,
    check_encoded,
    check_tensor,
    register_codec,
)
from peer.compression.serialization import CodecID, EncodedTensor, buffer_to_tensor, tensor_to_buffer

__all__ = ["FP16_MAX", "Float16Compression", "ScaledFloat16Compression"]

FP16_MAX = 65504.0
_FP32_TINY = torch.finfo(torch.float32).tiny


def _decode_float16(encoded: EncodedTensor) -> torch.Tensor:
    halves = buffer_to_tensor(encoded.payload, torch.float16, encoded.numel)
    return halves.to(encoded.dtype).view(encoded.shape)


class Float16Compression(CompressionBase):
    """Cast to float16, clamping to its finite range (see the module docstring)."""

    codec_id = CodecID.FLOAT16

    def encode(self, tensor: torch.Tensor, info: CompressionInfo | None = None) -> EncodedTensor:
        check_tensor(tensor, FLOAT_DTYPES)
        halves = torch.empty(tensor.shape, dtype=torch.float16, device=tensor.device)
        halves.copy_(tensor.detach())  # one pass: reads any strides, converts
        halves.clamp_(-FP16_MAX, FP16_MAX)
        return EncodedTensor(
            CodecID.FLOAT16, tensor.dtype, tuple(tensor.shape), b"", tensor_to_buffer(halves)
        )

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        check_encoded(encoded, CodecID.FLOAT16, FLOAT_DTYPES)
        if encoded.meta:
            raise ValueError(f"encoded: FLOAT16 carries no meta, got {len(encoded.meta)} bytes")
        return _decode_float16(encoded)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return 0.5


def scaled_float16_rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, row length) of a tensor of `shape` under SCALED_FLOAT16; (0, 0) when it is empty."""
    numel = math.prod(shape)
    if numel == 0:
        return 0, 0
    cols = shape[-1] if len(shape) >= 2 else numel
    return numel // cols, cols


class ScaledFloat16Compression(CompressionBase):
    """Standardize each row (mean/std in float32 meta), then cast to float16 (see the module docstring)."""

    codec_id = CodecID.SCALED_FLOAT16

    def encode(self, tensor: torch.Tensor, info: CompressionInfo | None = None) -> EncodedTensor:
        check_tensor(tensor, FLOAT_DTYPES)
        shape = tuple(tensor.shape)
        rows, cols = scaled_float16_rows(shape)
        if rows == 0:
            return EncodedTensor(CodecID.SCALED_FLOAT16, tensor.dtype, shape, b"", b"")
        work = torch.empty((rows, cols), dtype=torch.float32, device=tensor.device)
        work.copy_(tensor.detach().reshape(rows, cols))  # a fresh row-major copy, whatever the strides
        mean = work.mean(dim=1, keepdim=True)
        work.sub_(mean)
        std = torch.linalg.vector_norm(work, dim=1, keepdim=True).div_(math.sqrt(cols)).clamp_min_(_FP32_TINY)
        work.div_(std).clamp_(-FP16_MAX, FP16_MAX)
        halves = work.to(torch.float16)
        bad = ~(torch.isfinite(mean) & torch.isfinite(std)).view(-1)
        if bool(bad.any()):
            mean[bad] = math.nan
            std[bad] = math.nan
            halves[bad] = 0.0
        meta = b"".join(tensor_to_buffer(stat.view(-1).cpu()).tobytes() for stat in (mean, std))
        return EncodedTensor(CodecID.SCALED_FLOAT16, tensor.dtype, shape, meta, tensor_to_buffer(halves))

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        check_encoded(encoded, CodecID.SCALED_FLOAT16, FLOAT_DTYPES)
        rows, cols = scaled_float16_rows(encoded.shape)
        stats = buffer_to_tensor(encoded.meta, torch.float32, 2 * rows, what="meta")
        if rows == 0:
            buffer_to_tensor(encoded.payload, torch.float16, 0)  # checks that the payload is empty
            return torch.empty(encoded.shape, dtype=encoded.dtype)
        halves = buffer_to_tensor(encoded.payload, torch.float16, encoded.numel)
        out = halves.view(rows, cols).to(torch.float32)
        out.mul_(stats[rows:, None]).add_(stats[:rows, None])
        return out.to(encoded.dtype).view(encoded.shape)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return 0.5


register_codec(Float16Compression())
register_codec(ScaledFloat16Compression())
