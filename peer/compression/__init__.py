"""Tensor codecs for averaging and Mixture-of-Experts traffic.

    peer.compression.serialization  `EncodedTensor` (the wire form), `CodecID`, header dict/bytes,
                                    zero-copy tensor <-> buffer helpers
    peer.compression.base           `CompressionBase`, `CompressionInfo`, `TensorRole`, the decoder
                                    registry (`decode`, `get_codec`), `NoCompression`
    peer.compression.floating       `Float16Compression`, `ScaledFloat16Compression`
    peer.compression.quantization   `Uniform8BitQuantization`
    peer.compression.blockwise      `BlockwiseQuantization` (bitsandbytes or pure torch, one format)
    peer.compression.kernels        the slabbed pure-torch 8-bit kernels
    peer.compression.adaptive       `SizeAdaptiveCompression`, `RoleAdaptiveCompression`

Use: `encoded = codec.encode(tensor, info)`, send `encoded.to_header_dict()` (or
`to_header_bytes()`) and then `encoded.payload` in chunks; the receiver rebuilds it with
`EncodedTensor.from_header_dict(header, payload)` and calls `peer.compression.decode(encoded)`.
Each codec module's docstring specifies its wire format. Every codec works on any shape (a chunk
is just a 1-D slice), any strides, CPU or CUDA inputs, and decodes to a CPU tensor of the original
dtype and shape.

How each codec treats its inputs (lossy codecs compute in float32):

    codec            id  dtypes              bytes/value  error bound on finite values
    NONE             0   all wire dtypes     itemsize     exact
    FLOAT16          1   f32 f16 bf16 f64    2            rel 2**-11; |x| > 65504 clamps
    SCALED_FLOAT16   2   f32 f16 bf16 f64    2 (+8/row)   ~2**-11 * |x - row mean| + 2**-25 * row std
    UNIFORM_8BIT     3   f32 f16 bf16 f64    1 (+8)       step/2 inside [lo, hi], clipped outside
    BLOCKWISE_8BIT   4   f32 f16 bf16 f64    1 (+4/block) absmax(block) / 254 (x1.01 via bitsandbytes)

    codec            empty tensor         NaN                      +-inf
    NONE             empty payload        kept                     kept
    FLOAT16          empty payload        kept                     becomes +-65504
    SCALED_FLOAT16   empty meta/payload   its row decodes as NaN   its row decodes as NaN
    UNIFORM_8BIT     8-byte meta, empty   whole tensor NaN         whole tensor NaN
    BLOCKWISE_8BIT   4-byte meta, empty   its block decodes NaN    its block decodes NaN

Non-contiguous inputs are read through their strides or copied once; they never change the result.
Malformed `EncodedTensor`s raise `ValueError`; unsupported input dtypes raise `TypeError`.
"""

from peer.compression.adaptive import (
    AdaptiveCompressionBase,
    RoleAdaptiveCompression,
    SizeAdaptiveCompression,
)
from peer.compression.base import (
    CompressionBase,
    CompressionInfo,
    NoCompression,
    TensorRole,
    decode,
    get_codec,
    register_codec,
)
from peer.compression.blockwise import BlockwiseQuantization, bitsandbytes_available
from peer.compression.floating import Float16Compression, ScaledFloat16Compression
from peer.compression.quantization import Uniform8BitQuantization
from peer.compression.serialization import CodecID, EncodedTensor

__all__ = [
    "AdaptiveCompressionBase",
    "BlockwiseQuantization",
    "CodecID",
    "CompressionBase",
    "CompressionInfo",
    "EncodedTensor",
    "Float16Compression",
    "NoCompression",
    "RoleAdaptiveCompression",
    "ScaledFloat16Compression",
    "SizeAdaptiveCompression",
    "TensorRole",
    "Uniform8BitQuantization",
    "bitsandbytes_available",
    "decode",
    "get_codec",
    "register_codec",
]
