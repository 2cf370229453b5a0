"""Throughput and error of every tensor codec on Gaussian data.

    .venv/bin/python benchmarks/compression.py [--numel 16777216] [--repeats 3] [--seed 0]

For each codec it encodes and decodes one float32 tensor of N(0, 1) values and prints encode and
decode throughput (input float32 bytes / best wall time of `--repeats` runs), the mean squared
error of the round trip and the wire size relative to the input. It asserts nothing: targets are
>= 1 GB/s encode for FLOAT16 and BLOCKWISE_8BIT and MSE <= 1e-4 for the 8-bit codecs.
"none" is zero-copy both ways, so its figures only measure the header work.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from peer.compression import (
    BlockwiseQuantization,
    CompressionBase,
    Float16Compression,
    NoCompression,
    ScaledFloat16Compression,
    Uniform8BitQuantization,
    bitsandbytes_available,
)


def _best_time(function, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def _codecs() -> list[tuple[str, CompressionBase]]:
    codecs: list[tuple[str, CompressionBase]] = [
        ("none", NoCompression()),
        ("float16", Float16Compression()),
        ("scaled_float16", ScaledFloat16Compression()),
        ("uniform_8bit", Uniform8BitQuantization()),
        ("blockwise_8bit[torch]", BlockwiseQuantization(backend="torch")),
    ]
    if bitsandbytes_available():
        codecs.append(("blockwise_8bit[bitsandbytes]", BlockwiseQuantization(backend="bitsandbytes")))
    return codecs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=1 << 24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    values = torch.randn(args.numel)
    input_bytes = values.numel() * values.element_size()
    print(
        f"{args.numel} N(0,1) float32 values ({input_bytes / 2**20:.0f} MiB), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"bitsandbytes {'available' if bitsandbytes_available() else 'not available'}"
    )
    print(f"{'codec':<30}{'encode GB/s':>12}{'decode GB/s':>12}{'MSE':>12}{'wire/input':>12}")
    for name, codec in _codecs():
        codec.decode(codec.encode(values[:4096]))  # warm up (lazy imports, allocator)
        encode_time, encoded = _best_time(lambda c=codec: c.encode(values), args.repeats)
        decode_time, restored = _best_time(lambda c=codec, e=encoded: c.decode(e), args.repeats)
        mse = float(torch.mean((restored - values) ** 2))
        ratio = encoded.nbytes / input_bytes
        print(
            f"{name:<30}{input_bytes / encode_time / 1e9:>12.2f}{input_bytes / decode_time / 1e9:>12.2f}"
            f"{mse:>12.3g}{ratio:>12.4f}"
        )
        del encoded, restored


if __name__ == "__main__":
    main()
