"""Size- and role-adaptive codec selection, and `CompressionInfo`."""

from __future__ import annotations

import pytest
import torch

from peer.compression import (
    BlockwiseQuantization,
    CodecID,
    CompressionInfo,
    Float16Compression,
    NoCompression,
    RoleAdaptiveCompression,
    ScaledFloat16Compression,
    SizeAdaptiveCompression,
    TensorRole,
    Uniform8BitQuantization,
    decode,
)


def test_size_adaptive_switches_at_the_threshold() -> None:
    codec = SizeAdaptiveCompression(threshold=100)
    assert codec.encode(torch.randn(99)).codec == CodecID.FLOAT16
    assert codec.encode(torch.randn(100)).codec == CodecID.BLOCKWISE_8BIT
    assert codec.encode(torch.randn(0)).codec == CodecID.FLOAT16


def test_size_adaptive_defaults() -> None:
    codec = SizeAdaptiveCompression()
    assert codec.threshold == 2**16
    assert isinstance(codec.less, Float16Compression)
    assert isinstance(codec.greater_equal, BlockwiseQuantization)


def test_size_adaptive_uses_the_whole_tensor_size_for_chunks() -> None:
    codec = SizeAdaptiveCompression(
        threshold=1000, less=NoCompression(), greater_equal=Uniform8BitQuantization()
    )
    flat = torch.randn(5000)
    info = CompressionInfo.from_tensor(flat, role=TensorRole.GRADIENT)
    for index, start in enumerate(range(0, 5000, 500)):
        chunk = flat[start : start + 500]
        encoded = codec.encode(chunk, info.for_part(index, chunk.numel()))
        assert encoded.codec == CodecID.UNIFORM_8BIT
        assert encoded.shape == (500,)
    assert codec.encode(flat[:500]).codec == CodecID.NONE  # no info: the chunk itself is measured


def test_role_adaptive_gives_each_role_its_codec() -> None:
    codec = RoleAdaptiveCompression(
        gradient=BlockwiseQuantization(backend="torch"),
        parameter=Float16Compression(),
        optimizer=ScaledFloat16Compression(),
        default=Uniform8BitQuantization(),
    )
    x = torch.randn(300)
    expected = {
        TensorRole.GRADIENT: CodecID.BLOCKWISE_8BIT,
        TensorRole.PARAMETER: CodecID.FLOAT16,
        TensorRole.OPTIMIZER: CodecID.SCALED_FLOAT16,
        TensorRole.ACTIVATION: CodecID.UNIFORM_8BIT,
        TensorRole.UNSPECIFIED: CodecID.UNIFORM_8BIT,
    }
    for role, codec_id in expected.items():
        encoded = codec.encode(x, CompressionInfo.from_tensor(x, role=role))
        assert encoded.codec == codec_id, role
        assert torch.allclose(decode(encoded), x, atol=0.05)


def test_role_adaptive_defaults_to_no_compression() -> None:
    codec = RoleAdaptiveCompression(gradient=Float16Compression())
    x = torch.randn(10)
    assert codec.encode(x).codec == CodecID.NONE
    assert codec.encode(x, CompressionInfo(10, TensorRole.PARAMETER)).codec == CodecID.NONE
    assert codec.encode(x, CompressionInfo(10, TensorRole.GRADIENT)).codec == CodecID.FLOAT16


def test_selectors_nest_and_select_resolves_to_a_concrete_codec() -> None:
    small, large = Float16Compression(), Uniform8BitQuantization()
    codec = RoleAdaptiveCompression(
        gradient=SizeAdaptiveCompression(threshold=1000, less=small, greater_equal=large)
    )
    assert codec.select(CompressionInfo(999, TensorRole.GRADIENT)) is small
    assert codec.select(CompressionInfo(1000, TensorRole.GRADIENT)) is large
    assert isinstance(codec.select(CompressionInfo(5000)), NoCompression)
    assert codec.estimate_compression_ratio(CompressionInfo(1000, TensorRole.GRADIENT)) == 0.25
    x = torch.randn(2000)
    encoded = codec.encode(x, CompressionInfo.from_tensor(x, role=TensorRole.GRADIENT))
    assert encoded.codec == CodecID.UNIFORM_8BIT
    assert codec.decode(encoded).shape == x.shape


def test_selectors_check_their_arguments() -> None:
    with pytest.raises(TypeError, match="threshold"):
        SizeAdaptiveCompression(threshold=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        SizeAdaptiveCompression(threshold=-1)
    with pytest.raises(TypeError, match="less"):
        SizeAdaptiveCompression(less="fp16")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="optimizer"):
        RoleAdaptiveCompression(optimizer=torch.float16)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="info"):
        SizeAdaptiveCompression().encode(torch.randn(3), info=3)  # type: ignore[arg-type]


def test_compression_info_checks_its_fields() -> None:
    info = CompressionInfo(100, TensorRole.GRADIENT, key="layer.weight")
    part = info.for_part(3, 25)
    assert (part.size, part.role, part.key, part.part_index, part.part_size) == (
        100,
        TensorRole.GRADIENT,
        "layer.weight",
        3,
        25,
    )
    with pytest.raises(ValueError, match="size"):
        CompressionInfo(-1)
    with pytest.raises(TypeError, match="role"):
        CompressionInfo(1, role="gradient")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="part_index"):
        CompressionInfo(1, part_index=-2)
    with pytest.raises(ValueError, match="part_size"):
        CompressionInfo(1, part_size=-2)
    with pytest.raises(TypeError, match="tensor"):
        CompressionInfo.from_tensor([1.0])  # type: ignore[arg-type]
