"""Every codec: round trips within its documented bound, shapes/dtypes, edge cases, pinned wire bytes."""

from __future__ import annotations

import itertools
import math
import struct

import pytest
import torch

from peer.compression import (
    BlockwiseQuantization,
    CodecID,
    CompressionBase,
    EncodedTensor,
    Float16Compression,
    NoCompression,
    ScaledFloat16Compression,
    Uniform8BitQuantization,
    decode,
    get_codec,
    kernels,
)
from peer.compression import blockwise as blockwise_module

LOSSY = [
    Float16Compression(),
    ScaledFloat16Compression(),
    Uniform8BitQuantization(),
    BlockwiseQuantization(backend="torch"),
    BlockwiseQuantization(blocksize=64, backend="torch"),
]
ALL = [NoCompression(), *LOSSY]
FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _ids(codec: CompressionBase) -> str:
    return repr(codec)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]) if x.dim() >= 2 else x.reshape(1, -1)


def _allowed_error(codec: CompressionBase, x: torch.Tensor, encoded: EncodedTensor) -> torch.Tensor:
    """The documented per-value error bound, in float64, from the input and the transmitted meta."""
    x = x.double().reshape(-1)
    if isinstance(codec, NoCompression):
        bound = torch.zeros_like(x)
    elif isinstance(codec, Float16Compression):
        bound = x.abs() * 2**-11 + 2**-25
    elif isinstance(codec, ScaledFloat16Compression):
        rows = _rows(x.view(encoded.shape)) if encoded.shape else x.view(1, 1)
        stats = torch.frombuffer(bytearray(encoded.meta), dtype=torch.float32).double()
        mean, std = stats[: rows.shape[0], None], stats[rows.shape[0] :, None]
        bound = ((rows - mean).abs() * 2**-11 + std * 2**-24).reshape(-1)
    elif isinstance(codec, Uniform8BitQuantization):
        lo, step = struct.unpack("<ff", encoded.meta)  # clipped to [lo, hi] first, then step / 2
        bound = step / 2 + (x - x.clamp(lo, lo + 255 * step)).abs()
    else:
        (blocksize,) = struct.unpack_from("<I", encoded.meta)
        absmax = torch.frombuffer(bytearray(encoded.meta[4:]), dtype=torch.float32).double()
        bound = absmax.repeat_interleave(blocksize)[: x.numel()] / 254
    return bound + x.abs() * 1e-6 + 1e-30


def _output_rounding(restored: torch.Tensor) -> torch.Tensor:
    """Rounding added by casting the float32 result back to a 16-bit dtype."""
    if restored.dtype in (torch.float32, torch.float64):
        return torch.zeros_like(restored, dtype=torch.float64).reshape(-1)
    return restored.double().abs().reshape(-1) * torch.finfo(restored.dtype).eps + 2**-24


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("codec", ALL, ids=_ids)
def test_round_trip_stays_within_documented_bound(codec: CompressionBase, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = (torch.randn(6, 700) * torch.logspace(-3, 3, 6)[:, None] + 0.5).to(dtype)
    encoded = codec.encode(x)
    restored = decode(encoded)
    assert restored.dtype == dtype and restored.shape == x.shape and restored.device.type == "cpu"
    error = (restored.double() - x.double()).abs().reshape(-1)
    allowed = _allowed_error(codec, x, encoded) + _output_rounding(restored)
    assert bool((error <= allowed).all()), f"worst excess {float((error - allowed).max())}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("codec", LOSSY, ids=_ids)
def test_half_inputs_are_computed_in_float32(codec: CompressionBase, dtype: torch.dtype) -> None:
    torch.manual_seed(6)
    x = (torch.randn(64 * 40 + 37) * 10).to(dtype)  # exactly representable in float32
    half, single = codec.encode(x), codec.encode(x.float())
    assert half.meta == single.meta and bytes(half.payload) == bytes(single.payload)


@pytest.mark.parametrize("codec", [c for c in LOSSY if "8Bit" in type(c).__name__ or "Blockwise" in repr(c)])
def test_8bit_codecs_reach_mse_target_on_gaussian(codec: CompressionBase) -> None:
    torch.manual_seed(1)
    x = torch.randn(1 << 18)
    mse = float(((decode(codec.encode(x)) - x) ** 2).mean())
    assert mse <= 1e-4
    assert codec.encode(x).payload_nbytes == x.numel()


@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 5), (2, 3, 4), (5, 1), (1, 5000)])
@pytest.mark.parametrize("codec", ALL, ids=_ids)
def test_shape_and_dtype_are_restored(codec: CompressionBase, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    encoded = codec.encode(x)
    assert encoded.shape == shape and encoded.dtype == torch.float32
    assert encoded.codec == codec.codec_id
    restored = codec.decode(encoded)
    assert restored.shape == x.shape and restored.dtype == x.dtype
    assert torch.allclose(restored, x, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4), (2, 0, 3)])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("codec", ALL, ids=_ids)
def test_empty_tensors_round_trip(codec: CompressionBase, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    encoded = codec.encode(torch.empty(shape, dtype=dtype))
    assert encoded.payload_nbytes == 0
    restored = decode(EncodedTensor.from_header_dict(encoded.to_header_dict(), b""))
    assert restored.shape == shape and restored.dtype == dtype


@pytest.mark.parametrize("codec", ALL, ids=_ids)
def test_non_contiguous_input_encodes_like_its_contiguous_copy(codec: CompressionBase) -> None:
    torch.manual_seed(2)
    base = torch.randn(40, 300)
    for view in (base.t(), base[:, ::3], base[::2].unsqueeze(0).expand(2, -1, -1)):
        assert not view.is_contiguous()
        strided, packed = codec.encode(view), codec.encode(view.contiguous())
        assert strided.meta == packed.meta
        assert bytes(strided.payload) == bytes(packed.payload)
        assert torch.equal(decode(strided), decode(packed))


@pytest.mark.parametrize("codec", ALL, ids=_ids)
def test_chunks_of_a_flat_tensor_round_trip_independently(codec: CompressionBase) -> None:
    torch.manual_seed(3)
    flat = torch.randn(10_000)
    bounds = [0, 1, 1000, 2777, 2778, 6000, 10_000]
    parts = []
    for start, stop in itertools.pairwise(bounds):
        chunk = flat[start:stop]  # a view with a storage offset
        encoded = codec.encode(chunk)
        wire = EncodedTensor.from_header_bytes(encoded.to_header_bytes(), bytearray(encoded.payload))
        part = decode(wire)
        error = (part.double() - chunk.double()).abs()
        assert bool((error <= _allowed_error(codec, chunk, encoded)).all())
        parts.append(part)
    assert torch.cat(parts).shape == flat.shape


def test_no_compression_is_exact_for_every_wire_dtype() -> None:
    codec = NoCompression()
    tensors = [
        torch.tensor([1.5, math.nan, math.inf, -math.inf, -0.0]),
        torch.tensor([3.0, math.nan, math.inf], dtype=torch.bfloat16),
        torch.arange(-5, 5, dtype=torch.int64),
        torch.tensor([True, False, True]),
        torch.arange(200, dtype=torch.uint8),
    ]
    for x in tensors:
        restored = decode(
            EncodedTensor.from_header_dict(codec.encode(x).to_header_dict(), codec.encode(x).payload)
        )
        assert restored.dtype == x.dtype
        assert torch.equal(restored.view(torch.uint8), x.view(torch.uint8))  # bitwise, NaN included


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float16_clamps_overflow_and_keeps_nan(dtype: torch.dtype) -> None:
    x = torch.tensor([1e6, -1e6, math.inf, -math.inf, math.nan, 1.0], dtype=dtype)
    encoded = Float16Compression().encode(x)
    halves = struct.unpack("<6e", bytes(encoded.payload))
    assert halves[:4] == (65504.0, -65504.0, 65504.0, -65504.0)
    assert math.isnan(halves[4]) and halves[5] == 1.0
    restored = decode(encoded)
    expected = torch.tensor([65504.0, -65504.0, 65504.0, -65504.0]).to(dtype)  # bfloat16 rounds it
    assert torch.equal(restored[:4], expected) and bool(restored[4].isnan()) and restored[5] == 1.0


def test_float16_payload_is_plain_float16_bytes() -> None:
    x = torch.tensor([[1.0, -2.5], [0.1, 3.0]])
    encoded = Float16Compression().encode(x)
    assert encoded.meta == b"" and bytes(encoded.payload) == struct.pack("<4e", 1.0, -2.5, 0.1, 3.0)


def test_bfloat16_in_float16_range_round_trips_exactly() -> None:
    x = (torch.randn(4096) * 100).to(torch.bfloat16)
    assert torch.equal(decode(Float16Compression().encode(x)), x)


def test_scaled_float16_meta_holds_row_means_and_stds() -> None:
    x = torch.tensor([[1.0, 3.0], [10.0, 10.0], [-4.0, 0.0]])
    encoded = ScaledFloat16Compression().encode(x)
    means_stds = struct.unpack("<6f", encoded.meta)
    assert means_stds[:3] == (2.0, 10.0, -2.0)
    assert means_stds[3] == 1.0 and means_stds[4] < 1e-37 and means_stds[5] == 2.0
    assert struct.unpack("<6e", bytes(encoded.payload)) == (-1.0, 1.0, 0.0, 0.0, -1.0, 1.0)
    assert torch.equal(decode(encoded), x)


def test_scaled_float16_one_dimensional_tensor_is_one_row() -> None:
    encoded = ScaledFloat16Compression().encode(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert len(encoded.meta) == 8 and struct.unpack("<f", encoded.meta[:4])[0] == 2.5


def test_scaled_float16_keeps_far_from_zero_rows_precise() -> None:
    x = 1e5 + torch.randn(2, 1000)  # FLOAT16 would clamp these to 65504
    assert float((decode(ScaledFloat16Compression().encode(x)) - x).abs().max()) < 0.01


def test_scaled_float16_non_finite_row_decodes_as_nan_others_intact() -> None:
    x = torch.randn(4, 100)
    x[1, 7], x[2, 0] = math.nan, -math.inf
    encoded = ScaledFloat16Compression().encode(x)
    restored = decode(encoded)
    assert bool(restored[1:3].isnan().all())
    assert bytes(encoded.payload)[200:600] == bytes(400)  # bad rows carry zeros, not garbage
    assert torch.allclose(restored[[0, 3]], x[[0, 3]], atol=1e-2)


def test_uniform_8bit_codes_a_ramp_exactly() -> None:
    x = torch.arange(256, dtype=torch.float32) * 0.5 - 10.0  # std is wide enough: no clipping
    encoded = Uniform8BitQuantization(range_in_sigmas=100).encode(x)
    assert struct.unpack("<ff", encoded.meta) == (-10.0, 0.5)
    assert bytes(encoded.payload) == bytes(range(256))
    assert torch.equal(decode(encoded), x)


def test_uniform_8bit_clips_outliers_to_the_sigma_range() -> None:
    torch.manual_seed(4)
    x = torch.randn(100_000)
    x[0] = 50.0  # a moderate outlier: it hardly moves the std, but a min/max range would triple
    encoded = Uniform8BitQuantization().encode(x)
    lo, step = struct.unpack("<ff", encoded.meta)
    assert -4.5 < lo < -3.5 and 7 / 255 < step < 9 / 255
    restored = decode(encoded)
    assert float(restored[0]) == pytest.approx(lo + 255 * step)
    assert float(((restored[1:] - x[1:]) ** 2).mean()) < 1e-4


def test_uniform_8bit_constant_tensor_is_exact() -> None:
    x = torch.full((3, 7), -2.75)
    encoded = Uniform8BitQuantization().encode(x)
    assert struct.unpack("<ff", encoded.meta) == (-2.75, 0.0)
    assert torch.equal(decode(encoded), x)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_uniform_8bit_non_finite_value_makes_the_tensor_nan(bad: float) -> None:
    x = torch.randn(1000)
    x[500] = bad
    encoded = Uniform8BitQuantization().encode(x)
    assert math.isnan(struct.unpack("<ff", encoded.meta)[0]) and bytes(encoded.payload) == bytes(1000)
    assert bool(decode(encoded).isnan().all())


def test_blockwise_codes_follow_the_linear_map() -> None:
    x = torch.tensor([1.0, -1.0, 0.5, 0.0, -0.25] + [0.0] * 59 + [2.0])
    encoded = BlockwiseQuantization(blocksize=64, backend="torch").encode(x)
    assert encoded.meta == struct.pack("<Iff", 64, 1.0, 2.0)
    payload = bytes(encoded.payload)
    assert payload[:5] == bytes([254, 0, 191, 127, 95]) and payload[64] == 254
    assert blockwise_module.LINEAR_CODE[191] * 1.0 == decode(encoded)[2]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", FLOATS)
def test_blockwise_non_finite_block_decodes_as_nan_others_intact(bad: float, dtype: torch.dtype) -> None:
    x = torch.randn(64 * 3 + 10).to(dtype)
    x[70] = bad
    encoded = BlockwiseQuantization(blocksize=64, backend="torch").encode(x)
    absmax = struct.unpack("<4f", encoded.meta[4:])
    assert math.isnan(absmax[1]) and all(math.isfinite(a) for a in absmax[::2])
    assert bytes(encoded.payload)[64:128] == bytes([127]) * 64
    restored = decode(encoded)
    assert bool(restored[64:128].isnan().all()) and not bool(restored[:64].isnan().any())
    assert torch.allclose(restored[128:].float(), x[128:].float(), atol=0.05)


def test_blockwise_zero_block_is_exact() -> None:
    x = torch.zeros(3000)
    encoded = BlockwiseQuantization(backend="torch").encode(x)
    assert torch.equal(decode(encoded), x)


def test_blockwise_subnormal_block_stays_finite_and_within_its_absmax() -> None:
    x = torch.tensor([1e-40, -3e-40, 0.0, 2e-39] * 16)
    restored = decode(BlockwiseQuantization(blocksize=64, backend="torch").encode(x))
    assert bool(restored.isfinite().all())
    assert float((restored - x).abs().max()) <= 2e-39


def test_many_slabs_encode_exactly_like_one(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(5)
    x = torch.randn(64 * 50 + 13).bfloat16()
    codecs = [Uniform8BitQuantization(), BlockwiseQuantization(blocksize=64, backend="torch")]
    whole = [(c.encode(x), c.decode(c.encode(x))) for c in codecs]
    monkeypatch.setattr(kernels, "SLAB_ELEMENTS", 256)
    for codec, (encoded, restored) in zip(codecs, whole, strict=True):
        sliced = codec.encode(x)
        assert sliced.meta == encoded.meta and bytes(sliced.payload) == bytes(encoded.payload)
        assert torch.equal(codec.decode(sliced), restored)


@pytest.mark.parametrize("codec", LOSSY, ids=_ids)
def test_lossy_codecs_refuse_non_float_tensors(codec: CompressionBase) -> None:
    with pytest.raises(TypeError, match="tensor"):
        codec.encode(torch.arange(10))
    with pytest.raises(TypeError, match="tensor"):
        codec.encode([1.0, 2.0])  # type: ignore[arg-type]


@pytest.mark.parametrize("codec", ALL, ids=_ids)
def test_malformed_payload_and_meta_are_refused(codec: CompressionBase) -> None:
    encoded = codec.encode(torch.randn(100))
    header = encoded.to_header_dict()
    with pytest.raises(ValueError, match="payload"):
        decode(EncodedTensor.from_header_dict(header, bytes(encoded.payload)[:-1]))
    if encoded.meta:
        with pytest.raises(ValueError, match="meta"):
            decode(EncodedTensor.from_header_dict({**header, "meta": encoded.meta[:-1]}, encoded.payload))
    else:
        with pytest.raises(ValueError, match="meta"):
            decode(EncodedTensor.from_header_dict({**header, "meta": b"x"}, encoded.payload))


def test_decoding_with_the_wrong_codec_is_refused() -> None:
    encoded = Float16Compression().encode(torch.randn(8))
    with pytest.raises(ValueError, match="FLOAT16"):
        Uniform8BitQuantization().decode(encoded)
    int_payload = EncodedTensor(CodecID.FLOAT16, torch.int64, (1,), b"", bytes(8))
    with pytest.raises(ValueError, match="dtype"):
        decode(int_payload)


def test_blockwise_refuses_unknown_block_sizes() -> None:
    with pytest.raises(ValueError, match="blocksize"):
        BlockwiseQuantization(blocksize=100)
    with pytest.raises(TypeError, match="blocksize"):
        BlockwiseQuantization(blocksize=64.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend"):
        BlockwiseQuantization(backend="cuda")  # type: ignore[arg-type]
    forged = EncodedTensor(
        CodecID.BLOCKWISE_8BIT, torch.float32, (4,), struct.pack("<If", 100, 1.0), bytes(4)
    )
    with pytest.raises(ValueError, match="block size"):
        decode(forged)


def test_blockwise_bitsandbytes_backend_needs_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blockwise_module, "_bitsandbytes_functional", lambda: None)
    with pytest.raises(ValueError, match="bitsandbytes"):
        BlockwiseQuantization(backend="bitsandbytes")
    auto = BlockwiseQuantization()
    assert not auto.uses_bitsandbytes
    x = torch.randn(5000)
    assert float((auto.decode(auto.encode(x)) - x).abs().max()) < 0.05


def test_uniform_8bit_refuses_bad_range() -> None:
    with pytest.raises(ValueError, match="range_in_sigmas"):
        Uniform8BitQuantization(range_in_sigmas=0)
    with pytest.raises(TypeError, match="range_in_sigmas"):
        Uniform8BitQuantization(range_in_sigmas="8")  # type: ignore[arg-type]


def test_registry_knows_every_codec_id() -> None:
    for codec_id in CodecID:
        assert get_codec(codec_id).codec_id == codec_id
    with pytest.raises(ValueError, match="codec_id"):
        get_codec(99)


def test_estimated_ratios_match_payload_sizes() -> None:
    from peer.compression import CompressionInfo

    x = torch.randn(1 << 14)
    info = CompressionInfo.from_tensor(x)
    for codec in ALL:
        encoded = codec.encode(x)
        assert encoded.nbytes / (4 * x.numel()) == pytest.approx(
            codec.estimate_compression_ratio(info), rel=0.01
        )
