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

from . import _backend, _checks

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


def _check_quantize(x: torch.Tensor) -> None:
    """The compiled kernels' argument checks (csrc/cpu/int4.cpp), with their messages."""
    op = "int4_quantize"
    _checks.check(op, x.dim() == 2, lambda: f"x must be 2-D [R, D], got {x.dim()}-D")
    _checks.check(op, x.dtype in (torch.float32, torch.bfloat16, torch.float16),
                  lambda: f"x must be float32, bfloat16 or float16, got {_checks.dtype_name(x.dtype)}")
    _checks.check(op, x.shape[1] % 2 == 0,
                  lambda: f"x must have an even number of columns D (two codes per byte), got D = {x.shape[1]}")


def _check_dequantize(packed: torch.Tensor, half_scale_bias: bool, dtype: torch.dtype | None) -> None:
    op = "int4_dequantize"
    tail = _tail_bytes(half_scale_bias)
    _checks.check(op, packed.dim() == 2, lambda: f"packed must be 2-D [R, D/2 + {tail}], got {packed.dim()}-D")
    _checks.check(op, packed.dtype == torch.uint8,
                  lambda: f"packed must be uint8, got {_checks.dtype_name(packed.dtype)}")
    _checks.check(op, packed.shape[1] >= tail,
                  lambda: f"packed must have D/2 code bytes plus {tail} scale/bias bytes per row (at least {tail} "
                  f"columns), got {packed.shape[1]}")
    out_dtype = dtype or torch.float32
    _checks.check(op, out_dtype in (torch.float32, torch.bfloat16, torch.float16),
                  lambda: f"dtype must be float32, bfloat16 or float16, got {_checks.dtype_name(out_dtype)}")


@torch.library.register_fake("dv365::int4_quantize")
def _fake_int4_quantize(x: torch.Tensor, half_scale_bias: bool = False) -> torch.Tensor:
    _check_quantize(x)
    return x.new_empty(x.shape[0], x.shape[1] // 2 + _tail_bytes(half_scale_bias), dtype=torch.uint8)


@torch.library.register_fake("dv365::int4_dequantize")
def _fake_int4_dequantize(
    packed: torch.Tensor, half_scale_bias: bool = False, dtype: torch.dtype | None = None
) -> torch.Tensor:
    _check_dequantize(packed, half_scale_bias, dtype)
    out_dtype = dtype or torch.float32
    return packed.new_empty(packed.shape[0], 2 * (packed.shape[1] - _tail_bytes(half_scale_bias)), dtype=out_dtype)
