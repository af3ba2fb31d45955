"""Triton kernels for int4 rowwise codes (docs/design.md#int4-rows): ``dv365::int4_quantize_triton`` and
``dv365::int4_dequantize_triton``, byte-identical to :func:`dv365_ops.reference.int4_quantize`.

Row layout: D/2 code bytes (column 2j in the low nibble of byte j, 2j+1 in the high nibble), then scale and
bias (fp32, or fp16 with ``half_scale_bias``, fbgemm's ``FusedNBitRowwiseQuantizedSBHalf``)::

    fp32:  bias = min(x), scale = max((max(x) - min(x)) / 15, FLT_MIN) (0 for a constant row),
           q = clamp(rne((x - bias) * (1 / scale)), 0, 15)
    fp16:  bias = fp16(min), scale = fp16((max - bias) / 15) (1 when the range is 0 or 1/scale is infinite)
    x'   = q * scale + bias

``min`` gives a zero minimum the sign fbgemm's AVX2 kernel gives it (reference ``_int4_row_min``). A row with a
NaN or an infinity, or one its format cannot hold (the reference's rules), is flagged per row in ``status``;
the wrapper then re-runs the CPU kernel for its message, as the native CUDA op does.

Exactness: ``/`` is ``tl.math.div_rn`` (IEEE division, not the approximate default), round-half-to-even is
built from ``floor`` (libdevice ``rint`` is not available under the interpreter), and both kernels are
compiled with ``enable_fp_fusion=False``: contracted into an fma, ``v - floor(v)`` with ``v = d * inv`` sees
the unrounded product and misses exact ties (seen on the H200), and ``q * scale + bias`` would differ from
torch, which rounds the product first.

One program per ``BLOCK_R`` rows, each row whole and contiguous in registers (``tl.split`` /
``tl.interleave`` separate and rejoin the even and odd columns), so every load and store is coalesced.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import int4 as _family
from . import _util


def _config(half_d: int, elements: int) -> tuple[int, int]:
    block_h = triton.next_power_of_2(max(half_d, 1))
    return block_h, max(1, min(64, elements // block_h))


@triton.jit
def _rne(v):
    """Round half to even (``torch.round``) from floor, exact for every fp32 value."""
    f = tl.floor(v)
    frac = v - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    return f + tl.where((frac > 0.5) | ((frac == 0.5) & odd), 1.0, 0.0)


@triton.jit(do_not_specialize=["R"])  # the row count: no variant per "== 1" or "% 16 == 0"
def _quantize_kernel(
    x, out, status, R, H, stride_x, stride_o,
    HALF: tl.constexpr,  # fp16 scale/bias (4 tail bytes) instead of fp32 (8)
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    j = tl.arange(0, BLOCK_H)
    ok = (r < R)[:, None] & (j < H)[None, :]
    # whole rows, loaded contiguously, then split into even and odd columns
    c = tl.arange(0, 2 * BLOCK_H)
    c_ok = (r < R)[:, None] & (c < 2 * H)[None, :]
    xx = tl.load(x + r[:, None] * stride_x + c[None, :], mask=c_ok, other=0.0)
    xf = xx.to(tl.float32)
    xe, xo = tl.split(tl.reshape(xf, [BLOCK_R, BLOCK_H, 2]))
    inf = float("inf")
    not_finite = tl.max(((xf != xf) | (tl.abs(xf) == inf)).to(tl.int32), axis=1) > 0
    mn = tl.minimum(tl.min(tl.where(ok, xe, inf), axis=1), tl.min(tl.where(ok, xo, inf), axis=1))
    mx = tl.maximum(tl.max(tl.where(ok, xe, -inf), axis=1), tl.max(tl.where(ok, xo, -inf), axis=1))
    # a zero minimum takes its sign in fbgemm's order: lane c % 8 of the first D // 8 * 8 columns, the last zero
    # of a lane first, lanes from 0; then the remaining columns, the first first (the smallest key wins)
    d = 2 * H
    nv = d // 8 * 8
    zero = (xf == 0.0) & c_ok
    key = tl.where(c < nv, (c % 8) * (d + 1) + (d - c), 8 * (d + 1) + c)[None, :]
    key = tl.where(zero, key, 9 * (d + 1) + d)
    first = tl.min(key, axis=1)
    neg = tl.max((zero & (key == first[:, None]) & (xf.to(tl.int32, bitcast=True) < 0)).to(tl.uint32), axis=1)
    mn = tl.where(mn == 0.0, (neg << 31).to(tl.float32, bitcast=True), mn)
    mn = tl.where(H > 0, mn, 0.0)
    mx = tl.where(H > 0, mx, 0.0)
    if HALF:
        bias = mn.to(tl.float16).to(tl.float32)
        rng = mx - bias
        scale = tl.where(rng == 0.0, 1.0, tl.math.div_rn(rng, 15.0)).to(tl.float16).to(tl.float32)
        inv = tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)
        bad = (scale == 0.0) | (tl.abs(inv) == inf)
        scale = tl.where(bad, 1.0, scale)
        inv = tl.where(bad, 1.0, inv)
        too_wide = (tl.abs(scale) == inf) | (tl.abs(bias) == inf)
    else:
        bias = mn
        # at least FLT_MIN, decided on the range so that no denormal is formed (flushed to 0 where libdevice
        # flushes): a denormal scale would have an infinite inverse
        rng = mx - mn
        flt_min = 1.1754943508222875e-38
        scale = tl.where(rng < 15.0 * flt_min, flt_min, tl.math.div_rn(rng, 15.0))
        scale = tl.where(rng > 0.0, scale, 0.0)  # +0 for a constant row, whichever signed zeros it holds
        inv = tl.where(scale > 0.0, tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale), 0.0)
        too_wide = tl.abs(15.0 * scale + bias) == inf
    tl.store(status + r, tl.where(not_finite, 1, tl.where(too_wide, 2, 0)).to(tl.int8), mask=r < R)
    qe = tl.minimum(tl.maximum(_rne((xe - bias[:, None]) * inv[:, None]), 0.0), 15.0).to(tl.uint8)
    qo = tl.minimum(tl.maximum(_rne((xo - bias[:, None]) * inv[:, None]), 0.0), 15.0).to(tl.uint8)
    dst = out + r[:, None] * stride_o
    tl.store(dst + j[None, :], qe | (qo << 4), mask=ok)
    # the tail: scale then bias, little-endian bytes
    TAIL: tl.constexpr = 4 if HALF else 8
    k = tl.arange(0, TAIL)
    if HALF:
        s_bits = scale.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        b_bits = bias.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    else:
        s_bits = scale.to(tl.int32, bitcast=True)
        b_bits = bias.to(tl.int32, bitcast=True)
    half: tl.constexpr = TAIL // 2
    shift = 8 * (k % half)
    tail = tl.where(k[None, :] < half, s_bits[:, None] >> shift[None, :], b_bits[:, None] >> shift[None, :]) & 0xFF
    tl.store(dst + H + k[None, :], tail.to(tl.uint8), mask=(r < R)[:, None])


@triton.jit(do_not_specialize=["R"])
def _dequantize_kernel(
    packed, out, R, H, stride_p, stride_o,
    HALF: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < R
    j = tl.arange(0, BLOCK_H)
    ok = r_ok[:, None] & (j < H)[None, :]
    src = packed + r[:, None] * stride_p
    codes = tl.load(src + j[None, :], mask=ok, other=0).to(tl.int32)
    TAIL: tl.constexpr = 4 if HALF else 8
    half: tl.constexpr = TAIL // 2
    k = tl.arange(0, TAIL)
    tail = tl.load(src + H + k[None, :], mask=r_ok[:, None], other=0).to(tl.int64)
    shifted = tail << (8 * (k % half))[None, :]
    s_bits = tl.sum(tl.where(k[None, :] < half, shifted, 0), axis=1)
    b_bits = tl.sum(tl.where(k[None, :] >= half, shifted, 0), axis=1)
    if HALF:
        scale = s_bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        bias = b_bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        scale = s_bits.to(tl.int32).to(tl.float32, bitcast=True)
        bias = b_bits.to(tl.int32).to(tl.float32, bitcast=True)
    lo = (codes & 0xF).to(tl.float32) * scale[:, None] + bias[:, None]
    hi = (codes >> 4).to(tl.float32) * scale[:, None] + bias[:, None]
    # interleaved back into whole rows, stored contiguously
    c = tl.arange(0, 2 * BLOCK_H)
    vals = tl.interleave(lo, hi).to(out.dtype.element_ty)
    tl.store(out + r[:, None] * stride_o + c[None, :], vals, mask=r_ok[:, None] & (c < 2 * H)[None, :])


def int4_quantize(x: torch.Tensor, half_scale_bias: bool = False) -> torch.Tensor:
    # the family's fake holds the native op's argument checks and output shape
    out = _family._fake_int4_quantize(x, half_scale_bias)
    _util.check_device("int4_quantize", x)
    if x.stride(1) != 1:
        x = x.contiguous()
    r, h = x.shape[0], x.shape[1] // 2
    if r:
        block_h, block_r = _config(h, 2048)
        status = torch.empty(r, dtype=torch.int8, device=x.device)
        _quantize_kernel[(triton.cdiv(r, block_r),)](
            x, out, status, r, h, x.stride(0), out.stride(0),
            HALF=half_scale_bias, BLOCK_R=block_r, BLOCK_H=block_h, num_warps=4, enable_fp_fusion=False,
        )
        if _util.checks_enabled(x.device) and bool(status.any()):
            _raise_for_row(x, int(status.nonzero()[0, 0]), half_scale_bias)
    return out


def _quantize_on_cpu(rows: torch.Tensor, half_scale_bias: bool) -> torch.Tensor:
    return torch.ops.dv365.int4_quantize.default(rows.cpu(), half_scale_bias)


def _raise_for_row(x: torch.Tensor, i: int, half_scale_bias: bool) -> None:
    """Raise the compiled kernel's message (why the row cannot be encoded) for row ``i`` of ``x``: the CPU kernel
    holds the messages, and only that row is copied to the host for it."""
    try:
        _quantize_on_cpu(x[i : i + 1], half_scale_bias)
    except RuntimeError as e:
        # the one-row copy is row 0 to the CPU kernel
        raise RuntimeError(str(e).replace("row 0 of x", f"row {i} of x", 1)) from None
    _util.check(False, "int4_quantize", f"row {i} of x cannot be encoded (checked on the device)")


def int4_dequantize(
    packed: torch.Tensor, half_scale_bias: bool = False, dtype: torch.dtype | None = None
) -> torch.Tensor:
    out = _family._fake_int4_dequantize(packed, half_scale_bias, dtype)
    _util.check_device("int4_dequantize", packed)
    if packed.stride(1) != 1:
        packed = packed.contiguous()
    r, h = packed.shape[0], packed.shape[1] - (4 if half_scale_bias else 8)
    if r:
        block_h, block_r = _config(h, 4096)
        _dequantize_kernel[(triton.cdiv(r, block_r),)](
            packed, out, r, h, packed.stride(0), out.stride(0),
            HALF=half_scale_bias, BLOCK_R=block_r, BLOCK_H=block_h, num_warps=4, enable_fp_fusion=False,
        )
    return out


# fakes are the family's (dv365_ops/int4.py), shared with the native ops; no autograd (codes are integers)
for _name in ("int4_quantize", "int4_dequantize"):
    _util.define(_name, globals()[_name], getattr(_family, f"_fake_{_name}"))
