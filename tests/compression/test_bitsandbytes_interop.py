"""Blockwise 8-bit: peers with and without bitsandbytes read each other's tensors."""

from __future__ import annotations

import math
import os
import struct

import pytest
import torch

from peer.compression import BlockwiseQuantization, EncodedTensor, bitsandbytes_available

pytestmark = pytest.mark.skipif(
    not bitsandbytes_available()
    and os.environ.get("CI") != "true",  # CI installs the extra: never skip there
    reason="bitsandbytes is not importable here (install the [bitsandbytes] extra to run these)",
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _backends(blocksize: int) -> tuple[BlockwiseQuantization, BlockwiseQuantization]:
    return (
        BlockwiseQuantization(blocksize, backend="bitsandbytes"),
        BlockwiseQuantization(blocksize, backend="torch"),
    )


def _absmax(encoded: EncodedTensor) -> torch.Tensor:
    return torch.frombuffer(bytearray(encoded.meta[4:]), dtype=torch.float32)


def _bound(x: torch.Tensor, encoded: EncodedTensor, blocksize: int) -> torch.Tensor:
    absmax = _absmax(encoded).double().repeat_interleave(blocksize)[: x.numel()]
    return absmax * 1.01 / 254 + x.double().abs().reshape(-1) * torch.finfo(x.dtype).eps + 1e-30


def test_auto_backend_is_bitsandbytes_when_installed() -> None:
    assert BlockwiseQuantization().uses_bitsandbytes


@pytest.mark.parametrize("blocksize", [64, 1024, 4096])
@pytest.mark.parametrize("dtype", DTYPES)
def test_both_backends_write_the_same_format(dtype: torch.dtype, blocksize: int) -> None:
    torch.manual_seed(0)
    x = (torch.randn(3 * blocksize + 17) * 3).to(dtype)
    with_bnb, pure = _backends(blocksize)
    a, b = with_bnb.encode(x), pure.encode(x)
    assert (a.codec, a.dtype, a.shape) == (b.codec, b.dtype, b.shape)
    assert a.meta == b.meta  # same block size and absmax
    codes_a = torch.frombuffer(bytearray(a.payload), dtype=torch.uint8).int()
    codes_b = torch.frombuffer(bytearray(b.payload), dtype=torch.uint8).int()
    assert int((codes_a - codes_b).abs().max()) <= 1  # nearest-code ties may break either way
    assert float((codes_a != codes_b).float().mean()) < 0.01


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("direction", ["bitsandbytes->torch", "torch->bitsandbytes"])
def test_each_backend_decodes_the_other(direction: str, dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    x = (torch.randn(5, 999) * 0.1).to(dtype)
    with_bnb, pure = _backends(256)
    encoder, decoder = (with_bnb, pure) if direction == "bitsandbytes->torch" else (pure, with_bnb)
    encoded = encoder.encode(x)
    wire = EncodedTensor.from_header_bytes(encoded.to_header_bytes(), bytes(encoded.payload))
    restored = decoder.decode(wire)
    assert restored.dtype == dtype and restored.shape == x.shape
    error = (restored.double() - x.double()).abs().reshape(-1)
    assert bool((error <= _bound(x, encoded, 256)).all())
    same_decoder = encoder.decode(wire)
    assert torch.allclose(restored.double(), same_decoder.double(), rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_both_backends_mark_non_finite_blocks_the_same_way(bad: float) -> None:
    x = torch.randn(64 * 4 + 5)
    x[3], x[64 * 4 + 2] = bad, bad  # a full block and the short last one
    with_bnb, pure = _backends(64)
    a, b = with_bnb.encode(x), pure.encode(x)
    absmax = struct.unpack("<5f", a.meta[4:])
    assert math.isnan(absmax[0]) and math.isnan(absmax[4]) and all(map(math.isfinite, absmax[1:4]))
    assert a.meta[4:8] == b.meta[4:8] and a.meta[-4:] == b.meta[-4:]
    payload_a, payload_b = bytes(a.payload), bytes(b.payload)
    assert payload_a[:64] == payload_b[:64] == bytes([127]) * 64
    assert payload_a[256:] == payload_b[256:] == bytes([127]) * 5
    for decoder in (with_bnb, pure):
        for encoded in (a, b):
            restored = decoder.decode(encoded)
            assert bool(restored[:64].isnan().all()) and bool(restored[256:].isnan().all())
            assert not bool(restored[64:256].isnan().any())


def test_bitsandbytes_backend_handles_edge_cases() -> None:
    with_bnb, pure = _backends(64)
    for x in (torch.empty(0), torch.zeros(100), torch.randn(7, 3).t(), torch.tensor(2.5)):
        encoded = with_bnb.encode(x)
        for decoder in (with_bnb, pure):
            restored = decoder.decode(encoded)
            assert restored.shape == x.shape
            assert torch.allclose(restored, x, atol=0.02)
