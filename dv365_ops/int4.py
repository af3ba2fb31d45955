"""int4 rowwise codes for exported user embeddings (paper 2.3.2 / A.2; docs/design.md#int4-rows).

Each row of ``x [R, D]`` (D even) becomes D/2 code bytes (column 2j in the low nibble of byte j, 2j+1 in
the high nibble) followed by its scale and bias: fp32 by default (``D/2 + 8`` bytes, 136 for D = 256, i.e.
17 int64 per row, 58 rows per user), or fp16 with ``half_scale_bias=True`` (``D/2 + 4`` bytes,
byte-identical to fbgemm's ``FloatToFusedNBitRowwiseQuantizedSBHalf(x, 4)``). The exact math is in
:func:`dv365_ops.reference.int4_quantize`; every value comes back within ``scale / 2``.

The codes are not differentiable: the ops have no autograd formula, the uint8 codes never require grad, so
a loss computed from dequantized codes raises torch's "does not require grad" error on ``backward()``.
"""

from __future__ import annotations

import torch

from . import _backend

__all__ = ["as_int64", "from_int64", "int4_dequantize", "int4_quantize"]


def _tail_bytes(half_scale_bias: bool) -> int:
    return 4 if half_scale_bias else 8


def int4_quantize(x: torch.Tensor, *, half_scale_bias: bool = False) -> torch.Tensor:
    """``x [R, D]`` float32/bfloat16/float16 (D even, finite) -> uint8 ``[R, D/2 + 8]`` (``+ 4`` when half)."""
    _backend.check_tensor("int4_quantize", "x", x)
    return _backend.resolve("int4_quantize", x.device)(x, half_scale_bias)


def int4_dequantize(
    packed: torch.Tensor, *, half_scale_bias: bool = False, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """uint8 ``[R, D/2 + 8]`` (``+ 4`` when half) -> ``[R, D]``: ``q * scale + bias`` in float32, cast to ``dtype``."""
    _backend.check_tensor("int4_dequantize", "packed", packed)
    return _backend.resolve("int4_dequantize", packed.device)(packed, half_scale_bias, dtype)


def as_int64(packed: torch.Tensor) -> torch.Tensor:
    """Zero-copy int64 view ``[R, W / 8]`` of packed rows ``[R, W]`` (W = 136 -> 17 words for D = 256)."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"dv365_ops.as_int64: packed must be 2-D uint8, got {packed.dim()}-D {packed.dtype}")
    if packed.shape[1] % 8 != 0:
        raise ValueError(
            f"dv365_ops.as_int64: packed row width must be a multiple of 8 bytes, got {packed.shape[1]}"
        )
    return packed.view(torch.int64)


def from_int64(codes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`as_int64`: zero-copy uint8 view ``[R, 8 W]`` of int64 words ``[R, W]``."""
    if codes.dtype != torch.int64 or codes.dim() != 2:
        raise ValueError(f"dv365_ops.from_int64: codes must be 2-D int64, got {codes.dim()}-D {codes.dtype}")
    return codes.view(torch.uint8)


@torch.library.register_fake("dv365::int4_quantize")
def _fake_int4_quantize(x: torch.Tensor, half_scale_bias: bool = False) -> torch.Tensor:
    torch._check(x.dim() == 2, lambda: f"dv365::int4_quantize: x must be 2-D [R, D], got {x.dim()}-D")
    torch._check(
        x.dtype in (torch.float32, torch.bfloat16, torch.float16),
        lambda: f"dv365::int4_quantize: x must be float32, bfloat16 or float16, got {x.dtype}",
    )
    torch._check(x.shape[1] % 2 == 0, lambda: "dv365::int4_quantize: x must have an even number of columns D")
    return x.new_empty(x.shape[0], x.shape[1] // 2 + _tail_bytes(half_scale_bias), dtype=torch.uint8)


@torch.library.register_fake("dv365::int4_dequantize")
def _fake_int4_dequantize(
    packed: torch.Tensor, half_scale_bias: bool = False, dtype: torch.dtype | None = None
) -> torch.Tensor:
    tail = _tail_bytes(half_scale_bias)
    torch._check(packed.dim() == 2, lambda: f"dv365::int4_dequantize: packed must be 2-D, got {packed.dim()}-D")
    torch._check(packed.dtype == torch.uint8, lambda: f"dv365::int4_dequantize: packed must be uint8, got {packed.dtype}")
    torch._check(packed.shape[1] >= tail, lambda: f"dv365::int4_dequantize: packed must have at least {tail} columns")
    out_dtype = dtype or torch.float32
    torch._check(
        out_dtype in (torch.float32, torch.bfloat16, torch.float16),
        lambda: f"dv365::int4_dequantize: dtype must be float32, bfloat16 or float16, got {out_dtype}",
    )
    return packed.new_empty(packed.shape[0], 2 * (packed.shape[1] - tail), dtype=out_dtype)
