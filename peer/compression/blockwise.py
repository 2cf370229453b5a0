"""Blockwise 8-bit quantization: `BlockwiseQuantization`, with a bitsandbytes and a pure-torch backend.

BLOCKWISE_8BIT (codec id 4)
    The flattened tensor is cut into blocks of `blocksize` consecutive values (the last block may be
    shorter). Each block is scaled by its largest magnitude `absmax` and mapped through the linear
    code `LINEAR_CODE[i] = (i - 127) / 127` (256 entries, sorted; zero is exact):
    `q = argmin_i |x / absmax - LINEAR_CODE[i]|`, which is `floor(x * 127 / absmax + 127.5)`.
    meta: `<I` blocksize (a power of two, 64..4096), then `ceil(numel / blocksize)` little-endian
    float32 absmax values.
    payload: one uint8 code per value, row-major.
    Decoding: `x = LINEAR_CODE[q] * absmax[block] = (q - 127) * absmax[block] / 127`; codes 0..254
    are what encoders produce (255 would decode to 128/127 * absmax).
    Error: at most `absmax / 254` per value (half a step), plus float32 rounding; the bitsandbytes
    encoder rounds values within ~0.2% of a step from a midpoint either way, so allow
    `1.01 * absmax / 254` for tensors it encoded. A block of zeros is exact.
    Blocks whose absmax is below ~1e-36 (subnormal data) round towards zero instead.
    On N(0, 1) with the default 1024-value blocks the MSE is about 6e-5.
    Non-finite: a block holding a NaN or +-inf (or a float64 value beyond the float32 range) is
    sent as `absmax = NaN` with all codes 127, and decodes as all-NaN; other blocks are intact.
    Inputs: float32, float16, bfloat16, float64 (computed in float32), any shape and strides.

Two backends write and read this same wire format, so peers with and without bitsandbytes
interoperate:

- `"bitsandbytes"`: `bitsandbytes.functional.quantize_blockwise` / `dequantize_blockwise` with
  `code=LINEAR_CODE` (its documented custom-code API). Its nearest-code search may pick the
  neighbouring code near a tie (about 0.1% of values differ by one code from pure torch); both
  are within the error bound above. Its CPU kernel skips NaN when it takes the absmax, so the
  encoder finds NaN blocks itself and rewrites them as above.
- `"torch"`: vectorized slab kernels from `peer.compression.kernels`, no dependency.

`backend="auto"` (the default) uses bitsandbytes when it is importable (the `[bitsandbytes]`
extra) and pure torch otherwise.
"""

from __future__ import annotations

import functools
import logging
import math
import struct
import threading
import warnings
from types import ModuleType
from typing import Literal

import torch

from peer.compression.base import (
    FLOAT_DTYPES,
    CompressionBase,
    CompressionInfo,
    check_encoded,
    check_tensor,
    register_codec,
)
from peer.compression.kernels import block_absmax, block_amax, dequantize_blocks, quantize_blocks
from peer.compression.serialization import CodecID, EncodedTensor, buffer_to_tensor, tensor_to_buffer

__all__ = [
    "BLOCKSIZES",
    "LINEAR_CODE",
    "BlockwiseQuantization",
    "bitsandbytes_available",
]

logger = logging.getLogger(__name__)

BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)
"""Block sizes both backends accept (bitsandbytes' CUDA kernels accept only these)."""

LINEAR_CODE = (torch.arange(256, dtype=torch.float32) - 127.0) / 127.0
"""The 256-entry code map of BLOCKWISE_8BIT: `LINEAR_CODE[q]` times the block's absmax is the value."""

Backend = Literal["auto", "torch", "bitsandbytes"]
_BNB_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BLOCKSIZE_META = struct.Struct("<I")
_FP32_MAX = torch.finfo(torch.float32).max
_IMPORT_LOCK = threading.Lock()  # catch_warnings is process-global: one importing thread at a time


@functools.cache
def _bitsandbytes_functional() -> ModuleType | None:
    """`bitsandbytes.functional`, or None when bitsandbytes is missing or cannot load."""
    try:
        with _IMPORT_LOCK, warnings.catch_warnings():  # its import may warn about missing GPU libraries
            warnings.simplefilter("ignore")
            import bitsandbytes.functional as functional
    except Exception as exc:  # ImportError, or a native library that fails to load
        logger.debug("bitsandbytes is not usable, blockwise quantization uses pure torch: %s", exc)
        return None
    return functional


def bitsandbytes_available() -> bool:
    """Whether bitsandbytes can be imported here."""
    return _bitsandbytes_functional() is not None


def _mark_bad_blocks(codes: torch.Tensor, absmax: torch.Tensor, bad: torch.Tensor, blocksize: int) -> None:
    """Rewrite the blocks flagged in `bad` as the wire format wants: absmax NaN, codes 127."""
    absmax[bad] = math.nan
    full_blocks = codes.numel() // blocksize
    codes[: full_blocks * blocksize].view(full_blocks, blocksize)[bad[:full_blocks]] = 127
    if full_blocks < bad.numel() and bool(bad[-1]):
        codes[full_blocks * blocksize :] = 127


def _encode_torch(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, absmax) for a flat contiguous CPU tensor, in pure torch."""
    absmax = block_absmax(flat, blocksize)
    bad = ~torch.isfinite(absmax)
    has_bad = bool(bad.any())
    # zero, NaN (NaN > 0 is false) and inf (127 / inf) absmax all give inv = 0: finite values of such a
    # block land on code 127, and fix_nan moves its NaN/inf values there too
    inv = torch.where(absmax > 0, 127.0 / absmax, 0.0).clamp_(max=_FP32_MAX)
    if has_bad:
        absmax[bad] = math.nan
    codes = torch.empty(flat.numel(), dtype=torch.uint8)
    quantize_blocks(flat, codes, inv, blocksize, fix_nan=has_bad)
    return codes, absmax


def _encode_bitsandbytes(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, absmax) for a flat contiguous tensor on any device, with bitsandbytes."""
    functional = _bitsandbytes_functional()
    if functional is None:
        raise RuntimeError("bitsandbytes is not importable")
    values = flat if flat.dtype in _BNB_DTYPES else flat.to(torch.float32)
    codes, state = functional.quantize_blockwise(
        values, code=LINEAR_CODE.to(values.device), blocksize=blocksize
    )
    absmax = state.absmax.to(torch.float32)
    bad = ~torch.isfinite(absmax) | torch.isnan(block_amax(values, blocksize))
    if bool(bad.any()):
        _mark_bad_blocks(codes, absmax, bad, blocksize)
    return codes.reshape(-1).cpu(), absmax.cpu()


def _decode_bitsandbytes(
    codes: torch.Tensor, absmax: torch.Tensor, blocksize: int, dtype: torch.dtype
) -> torch.Tensor:
    """The flat float tensor of `dtype` that `codes` and `absmax` stand for, with bitsandbytes."""
    functional = _bitsandbytes_functional()
    if functional is None:
        raise RuntimeError("bitsandbytes is not importable")
    out_dtype = dtype if dtype in _BNB_DTYPES else torch.float32
    state = functional.QuantState(absmax=absmax, code=LINEAR_CODE, blocksize=blocksize, dtype=out_dtype)
    return functional.dequantize_blockwise(codes, quant_state=state).to(dtype)


class BlockwiseQuantization(CompressionBase):
    """8-bit codes scaled per block of `blocksize` values (see the module docstring for the wire format).

    `backend` is `"auto"` (bitsandbytes if importable, else torch), `"torch"` or `"bitsandbytes"`
    (which raises `ValueError` here when bitsandbytes is not importable).
    """

    codec_id = CodecID.BLOCKWISE_8BIT

    def __init__(self, blocksize: int = 1024, backend: Backend = "auto"):
        if isinstance(blocksize, bool) or not isinstance(blocksize, int):
            raise TypeError(f"blocksize: expected an int, got {type(blocksize)}")
        if blocksize not in BLOCKSIZES:
            raise ValueError(f"blocksize: expected one of {BLOCKSIZES}, got {blocksize}")
        if backend not in ("auto", "torch", "bitsandbytes"):
            raise ValueError(f"backend: expected 'auto', 'torch' or 'bitsandbytes', got {backend!r}")
        if backend == "bitsandbytes" and not bitsandbytes_available():
            raise ValueError(
                "backend: bitsandbytes is not importable (install the [bitsandbytes] extra) "
                "or use backend='auto'"
            )
        self.blocksize = blocksize
        self.backend: Backend = backend

    def __repr__(self) -> str:
        return f"{type(self).__name__}(blocksize={self.blocksize}, backend={self.backend!r})"

    @property
    def uses_bitsandbytes(self) -> bool:
        """Whether this codec runs bitsandbytes (resolving `backend="auto"`)."""
        return self.backend == "bitsandbytes" or (self.backend == "auto" and bitsandbytes_available())

    def encode(self, tensor: torch.Tensor, info: CompressionInfo | None = None) -> EncodedTensor:
        check_tensor(tensor, FLOAT_DTYPES)
        shape = tuple(tensor.shape)
        flat = tensor.detach().reshape(-1).contiguous()
        if flat.numel() == 0:
            codes, absmax = torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.float32)
        elif self.uses_bitsandbytes:
            codes, absmax = _encode_bitsandbytes(flat, self.blocksize)
        else:
            codes, absmax = _encode_torch(flat.cpu(), self.blocksize)
        meta = _BLOCKSIZE_META.pack(self.blocksize) + tensor_to_buffer(absmax).tobytes()
        return EncodedTensor(CodecID.BLOCKWISE_8BIT, tensor.dtype, shape, meta, tensor_to_buffer(codes))

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        check_encoded(encoded, CodecID.BLOCKWISE_8BIT, FLOAT_DTYPES)
        if len(encoded.meta) < _BLOCKSIZE_META.size:
            raise ValueError(f"meta: expected at least {_BLOCKSIZE_META.size} bytes, got {len(encoded.meta)}")
        (blocksize,) = _BLOCKSIZE_META.unpack_from(encoded.meta)
        if blocksize not in BLOCKSIZES:
            raise ValueError(f"meta: block size {blocksize} is not one of {BLOCKSIZES}")
        numel = encoded.numel
        num_blocks = -(-numel // blocksize)
        absmax = buffer_to_tensor(
            encoded.meta[_BLOCKSIZE_META.size :], torch.float32, num_blocks, what="meta"
        )
        codes = buffer_to_tensor(encoded.payload, torch.uint8, numel)
        if numel == 0:
            return torch.empty(encoded.shape, dtype=encoded.dtype)
        if self.uses_bitsandbytes:
            out = _decode_bitsandbytes(codes, absmax, blocksize, encoded.dtype)
        else:
            out = torch.empty(numel, dtype=encoded.dtype)
            dequantize_blocks(codes, out, absmax / 127.0, blocksize)
        return out.view(encoded.shape)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return 0.25 + 1.0 / self.blocksize


register_codec(BlockwiseQuantization())
