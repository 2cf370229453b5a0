"""Uniform 8-bit quantization: `Uniform8BitQuantization`.

UNIFORM_8BIT (codec id 3)
    One range `[lo, hi]` per encoded tensor (so per chunk when the averager encodes chunks), cut
    into 256 evenly spaced levels: `step = (hi - lo) / 255`.
    The range is the tensor's min/max, each side clipped to `mean +- range_in_sigmas/2 * std`
    (population std). With the default 8 sigmas, rare outliers do not stretch the grid: on N(0, 1)
    the MSE is about 8.8e-5, where a plain min/max range over 16M values gives about 1.5e-4.
    meta: `<ff` = (lo, step) as little-endian float32 (8 bytes).
    payload: one uint8 code per value, row-major: `q = floor(clamp((x - lo) / step + 0.5, 0, 255))`.
    Decoding: `x = lo + q * step` in float32, then cast to the original dtype.
    Error: at most `step / 2` (plus float32 rounding) for values inside `[lo, hi]`; values outside
    are clipped to `lo` or `hi`. A constant tensor is exact (`step == 0`).
    Non-finite: if any value is NaN or +-inf, the whole tensor (chunk) is sent as `lo = NaN`,
    `step = 0` and zero codes, and decodes as all-NaN.
    Inputs: float32, float16, bfloat16, float64 (computed in float32), any shape and strides.
"""

from __future__ import annotations

import math
import struct

import torch

from peer.compression.base import (
    FLOAT_DTYPES,
    CompressionBase,
    CompressionInfo,
    check_encoded,
    check_tensor,
    register_codec,
)
from peer.compression.kernels import dequantize_range, quantize_range
from peer.compression.serialization import CodecID, EncodedTensor, buffer_to_tensor, tensor_to_buffer

__all__ = ["Uniform8BitQuantization"]

_RANGE_META = struct.Struct("<ff")
_NUM_LEVELS = 256
_FP32_MAX = torch.finfo(torch.float32).max


def _as_float32(value: float) -> float:
    """`value` rounded to float32, as the decoder will read it from the meta."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


class Uniform8BitQuantization(CompressionBase):
    """Affine 8-bit codes over a per-tensor range clipped at `range_in_sigmas` std (see the module)."""

    codec_id = CodecID.UNIFORM_8BIT

    def __init__(self, range_in_sigmas: float = 8.0):
        if isinstance(range_in_sigmas, bool) or not isinstance(range_in_sigmas, (int, float)):
            raise TypeError(f"range_in_sigmas: expected a number, got {type(range_in_sigmas)}")
        if not math.isfinite(range_in_sigmas) or range_in_sigmas <= 0:
            raise ValueError(f"range_in_sigmas: expected a positive finite number, got {range_in_sigmas}")
        self.range_in_sigmas = float(range_in_sigmas)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(range_in_sigmas={self.range_in_sigmas})"

    def _value_range(self, flat: torch.Tensor) -> tuple[float, float] | None:
        """(lo, hi) for a non-empty float32 tensor, or None when it holds NaN or inf."""
        lo, hi = float(flat.amin()), float(flat.amax())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return None
        numel = flat.numel()
        mean = float(flat.sum()) / numel
        var = float(torch.dot(flat, flat)) / numel - mean * mean
        if not math.isfinite(var) or var < 1e-3 * mean * mean:  # overflow, or cancellation: be exact
            var_t, mean_t = torch.var_mean(flat, correction=0)
            var, mean = float(var_t), float(mean_t)
        if math.isfinite(mean) and math.isfinite(var):
            half_width = self.range_in_sigmas / 2 * math.sqrt(max(var, 0.0))
            lo, hi = max(lo, mean - half_width), min(hi, mean + half_width)
        return lo, hi

    def encode(self, tensor: torch.Tensor, info: CompressionInfo | None = None) -> EncodedTensor:
        check_tensor(tensor, FLOAT_DTYPES)
        shape = tuple(tensor.shape)
        flat = tensor.detach().reshape(-1)
        if flat.device.type != "cpu":
            flat = flat.cpu()
        flat = flat.to(torch.float32).contiguous()
        codes = torch.empty(flat.numel(), dtype=torch.uint8)
        if flat.numel() == 0:
            lo, step = 0.0, 0.0
        elif (value_range := self._value_range(flat)) is None:
            lo, step = math.nan, 0.0
            codes.zero_()
        else:
            lo = _as_float32(value_range[0])
            step = _as_float32(max(value_range[1] - lo, 0.0) / (_NUM_LEVELS - 1))
            inv = 1.0 / step if step > 0 else 0.0
            if inv > _FP32_MAX:  # a subnormal step: its reciprocal overflows float32, use one level
                inv = 0.0
            quantize_range(flat, codes, lo, inv)
        meta = _RANGE_META.pack(lo, step)
        return EncodedTensor(CodecID.UNIFORM_8BIT, tensor.dtype, shape, meta, tensor_to_buffer(codes))

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        check_encoded(encoded, CodecID.UNIFORM_8BIT, FLOAT_DTYPES)
        if len(encoded.meta) != _RANGE_META.size:
            raise ValueError(f"meta: expected {_RANGE_META.size} bytes, got {len(encoded.meta)}")
        lo, step = _RANGE_META.unpack(encoded.meta)
        codes = buffer_to_tensor(encoded.payload, torch.uint8, encoded.numel)
        out = torch.empty(encoded.numel, dtype=encoded.dtype)
        if math.isnan(lo):
            out.fill_(math.nan)
        else:
            dequantize_range(codes, out, lo, step)
        return out.view(encoded.shape)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return 0.25


register_codec(Uniform8BitQuantization())
