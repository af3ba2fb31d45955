"""Pure-torch references for every dv365 op.

These define the semantics each kernel implements; tests use them as the oracle and benchmarks as the
plain-torch baseline. They favour clarity over speed and accumulate in float32 (float64 for float64
inputs).
"""

from __future__ import annotations


import torch

from . import program as P


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def jagged_mean_pool(
    table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``out[m] = sum_i w_i * table[ids_i] / sum_i w_i`` over bag ``m = [offsets[m], offsets[m+1])``.

    An empty bag, or one whose weights sum to 0, pools to zeros. Output dtype is the table's.
    """
    acc = _acc_dtype(table.dtype)
    m = offsets.numel() - 1
    seg = torch.repeat_interleave(torch.arange(m, device=ids.device), offsets.diff(), output_size=ids.numel())
    rows = table.index_select(0, ids).to(acc)
    w = torch.ones(ids.numel(), dtype=acc, device=ids.device) if weights is None else weights.to(acc)
    num = torch.zeros(m, table.shape[1], dtype=acc, device=table.device).index_add_(0, seg, rows * w[:, None])
    den = torch.zeros(m, dtype=acc, device=table.device).index_add_(0, seg, w)
    out = torch.where(den[:, None] > 0, num / den.clamp_min(torch.finfo(acc).tiny)[:, None], 0.0)
    return out.to(table.dtype)


def token_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Mean over windows of ``stride`` along the last axis: ``[..., N] -> [..., ceil(N / stride)]``.

    The last window averages the elements it has.
    """
    n = x.shape[-1]
    n_out = -(-n // stride)
    acc = _acc_dtype(x.dtype)
    xs = torch.nn.functional.pad(x.to(acc), (0, n_out * stride - n))
    sums = xs.reshape(*x.shape[:-1], n_out, stride).sum(-1)
    counts = (n - torch.arange(n_out, device=x.device) * stride).clamp(max=stride).to(acc)
    return (sums / counts).to(x.dtype)


def _int4_row_min(xf: torch.Tensor) -> torch.Tensor:
    """Each row's minimum, the sign of a zero minimum picked as fbgemm's AVX2 kernel picks it.

    ``torch.amin`` leaves the sign of a zero minimum to its reduction order; the half variant's bias bytes must
    match fbgemm's for every finite row, so every backend follows fbgemm's order: eight lanes over the first
    ``D // 8 * 8`` columns (column ``j`` in lane ``j % 8``), each lane keeping its *last* zero (``min_ps``
    returns its second operand on a tie), the lanes merged from lane 0 keeping the *first*, then the remaining
    columns, keeping the first. The same rule gives the fp32 variant's bias.
    """
    r, d = xf.shape
    if d == 0:
        return xf.new_zeros(r)
    mn = xf.amin(1)
    nv = d // 8 * 8
    cols = torch.arange(d, device=xf.device)
    # lower key wins: lane-major, the last zero of a lane first; then the tail in column order
    key = torch.where(cols < nv, (cols % 8) * (d + 1) + (d - cols), 8 * (d + 1) + cols)
    key = torch.where(xf == 0, key, 9 * (d + 1) + d)
    chosen = xf.gather(1, key.argmin(1, keepdim=True))[:, 0]
    return torch.where(mn == 0, chosen, mn)


def _int4_check_encodable(xf, mn, mx, scale, bias, half_scale_bias: bool) -> None:
    """Rows whose scale or bias cannot be stored raise, as the kernels do (docs/design.md#int4-rows)."""
    if half_scale_bias:
        bad = torch.isinf(scale) | torch.isinf(bias)
    else:
        bad = torch.isinf(15.0 * scale + bias)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise RuntimeError(_int4_range_message(i, float(mn[i]), float(mx[i]), half_scale_bias))


def _int4_range_message(row: int, mn: float, mx: float, half_scale_bias: bool) -> str:
    """The kernels' message for a row whose scale or bias overflows its format (csrc/cpu/int4.cpp)."""
    if half_scale_bias:
        return (
            f"dv365::int4_quantize: row {row} of x spans [{mn:g}, {mx:g}], beyond float16 scale/bias "
            "(half_scale_bias=True): fp16(min) or fp16((max - bias) / 15) is infinite; keep |min| < 65520 and "
            "max - min < 982800, or use half_scale_bias=False"
        )
    return (
        f"dv365::int4_quantize: row {row} of x spans [{mn:g}, {mx:g}], too wide for float32 codes: its top "
        "code decodes to 15 * scale + bias = inf (keep max - min below about 3.4e38)"
    )


def int4_quantize(x: torch.Tensor, half_scale_bias: bool = False) -> torch.Tensor:
    """Rowwise int4 codes: ``x [R, D]`` (D even) -> uint8 ``[R, D/2 + 8]`` (``[R, D/2 + 4]`` with half scale/bias).

    Row layout: D/2 code bytes (column 2j in the low nibble of byte j, column 2j+1 in the high nibble), then
    the scale, then the bias, little-endian. fp32 variant: ``bias = min``, ``scale = (max - min) / 15``, or
    ``FLT_MIN`` (2^-126) when ``0 < max - min < 15 * FLT_MIN`` (a denormal scale would have an infinite inverse
    and decode every value to the bias), ``q = clamp(round_half_even((x - bias) * (1 / scale)), 0, 15)``
    (``scale = +0`` and ``q = 0`` for a constant row). Half variant (fbgemm's ``FloatToFusedNBitRowwiseQuantizedSBHalf(x, 4)``): ``bias =
    fp16(min)``, ``scale = fp16((max - bias) / 15)``, and a zero or infinite-inverse scale becomes 1.
    ``min`` picks the sign of a zero minimum as fbgemm does (:func:`_int4_row_min`).

    A row that its format cannot hold raises: fp32, when the top code would decode to infinity
    (``15 * scale + bias`` overflows, e.g. ``[-3e38, 3e38]``); half, when ``fp16(min)`` or the fp16 scale is
    infinite (|min| >= 65520, or max - min beyond about 982 800), where fbgemm would store an infinity.
    """
    xf = x.float()
    if not bool(torch.isfinite(xf).all()):
        raise RuntimeError("dv365::int4_quantize: x must be finite (found NaN or Inf)")
    # Divisions are tensor by tensor: torch turns a division by a Python scalar on CUDA into a multiply by its
    # rounded reciprocal, and the format must not depend on the device (fbgemm divides, on every device).
    fifteen = torch.full((xf.shape[0],), 15.0, device=xf.device)
    one = torch.ones_like(fifteen)
    mn = _int4_row_min(xf)
    mx = xf.amax(1) if xf.shape[1] else xf.new_zeros(xf.shape[0])
    if half_scale_bias:
        bias = mn.half().float()
        rng = mx - bias
        scale = torch.where(rng == 0, one, rng / fifteen).half().float()
        inv = one / scale
        bad = (scale == 0) | torch.isinf(inv)
        scale = torch.where(bad, torch.ones_like(scale), scale)
        inv = torch.where(bad, torch.ones_like(inv), inv)
        _int4_check_encodable(xf, mn, mx, scale, bias, True)
        tail = torch.stack([scale.half(), bias.half()], 1).view(torch.uint8)
    else:
        bias = mn
        rng = mx - mn
        tiny = torch.finfo(torch.float32).tiny
        # rng > 0 or a +0 scale: a zero range is -0 where the max is -0 and the min +0, as reductions may pick
        scale = torch.where(rng < 15 * tiny, torch.full_like(rng, tiny), rng / fifteen)
        scale = torch.where(rng > 0, scale, torch.zeros_like(rng))
        inv = torch.where(scale > 0, one / scale, torch.zeros_like(scale))
        _int4_check_encodable(xf, mn, mx, scale, bias, False)
        tail = torch.stack([scale, bias], 1).view(torch.uint8)
    q = torch.round((xf - bias[:, None]) * inv[:, None]).clamp(0, 15).to(torch.uint8)
    codes = q[:, 0::2] | (q[:, 1::2] << 4)
    return torch.cat([codes, tail], 1)


def int4_dequantize(
    packed: torch.Tensor, half_scale_bias: bool = False, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Inverse of :func:`int4_quantize`: ``x = q * scale + bias`` in float32, cast to ``dtype`` (float32)."""
    tail_bytes = 4 if half_scale_bias else 8
    codes = packed[:, : packed.shape[1] - tail_bytes]
    tail = packed[:, packed.shape[1] - tail_bytes :].contiguous(memory_format=torch.contiguous_format).clone(memory_format=torch.contiguous_format)
    sb = (tail.view(torch.float16) if half_scale_bias else tail.view(torch.float32)).float()
    q = torch.stack([codes & 0xF, codes >> 4], 2).reshape(packed.shape[0], 2 * codes.shape[1]).float()
    return (q * sb[:, :1] + sb[:, 1:]).to(dtype or torch.float32)


def slice_membership(
    offsets: torch.Tensor,
    ts: torch.Tensor,
    cats: torch.Tensor,
    floats: torch.Tensor,
    request_ts: torch.Tensor,
    prog_i: torch.Tensor,
    prog_f: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate a slice program (see :mod:`dv365_ops.program`) on every event.

    Returns ``keep`` bool ``[S, N]`` and ``weight`` float32 ``[S, N]`` (1 for unweighted slices).
    """
    n = ts.numel()
    b = offsets.numel() - 1
    user = torch.repeat_interleave(torch.arange(b, device=ts.device), offsets.diff(), output_size=n)
    dt = (request_ts[user] - ts)[None, :]
    keep = (dt > prog_i[:, P.WIN_LO, None]) & (dt <= prog_i[:, P.WIN_HI, None])
    for field_col, mask_col in zip(P.CAT_FIELD, P.CAT_MASK):
        field = prog_i[:, field_col]
        if cats.shape[0] == 0:
            keep &= (field < 0)[:, None]
            continue
        values = cats.long()[field.clamp(0, cats.shape[0] - 1)]
        bit = (prog_i[:, mask_col, None] >> values) & 1
        keep &= (field[:, None] < 0) | (bit == 1)
    flags = prog_i[:, P.FLAGS, None]
    weight = torch.ones(keep.shape, dtype=torch.float32, device=ts.device)
    if floats.shape[0] == 0:
        return keep & ((flags & (P.WEIGHTED | P.DWELL_FILTER | P.RATIO_FILTER)) == 0), weight
    dur = floats[P.FLOAT_DURATION].double()[None, :]
    dwell = floats[P.FLOAT_DWELL].double()[None, :]
    # outside its domain a field is unknown (program.py): NaN fails every bound, so such an event is in no slice
    # that reads the field; a duration of 0 (a photo) has no watch ratio and no debiased score
    nan = torch.full_like(dur, float("nan"))
    dwell = torch.where(torch.isfinite(dwell) & (dwell >= 0), dwell, nan)
    dur = torch.where(torch.isfinite(dur) & (dur > 0), dur, nan)
    f = prog_f.double()
    in_dwell = (dwell >= f[:, P.DWELL_LO, None]) & (dwell <= f[:, P.DWELL_HI, None])
    keep &= ((flags & P.DWELL_FILTER) == 0) | in_dwell
    # beta = 1 and beta = 0.5 (the common ones) are exact on every device (CUDA's pow is not correctly rounded);
    # |sqrt| because pow(-0, 0.5) = +0
    beta = f[:, P.BETA, None]
    ratio = dwell / torch.where(beta == 1.0, dur, torch.where(beta == 0.5, dur.sqrt().abs(), dur.pow(beta)))
    in_ratio = (ratio >= f[:, P.RATIO_LO, None]) & (ratio <= f[:, P.RATIO_HI, None])
    keep &= ((flags & P.RATIO_FILTER) == 0) | in_ratio
    denom = torch.log1p(f[:, P.GAMMA, None] * dur)
    score = torch.log1p(dwell) / denom
    weighted = (flags & P.WEIGHTED) != 0
    keep &= ~weighted | ((denom > 0) & (score > f[:, P.S0, None]))
    weight = torch.where(weighted & keep, score.clamp(max=P.MAX_SCORE), 1.0).float()
    return keep, weight


def slice_timeline(
    ids: list[torch.Tensor],
    offsets: torch.Tensor,
    ts: torch.Tensor,
    cats: torch.Tensor,
    floats: torch.Tensor,
    request_ts: torch.Tensor,
    prog_i: torch.Tensor,
    prog_f: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Emit every slice's selected ids and weights in KeyedJaggedTensor order (slice-major, then user,
    then timeline order). Returns ``(values int64 [L], weights float32 [L], lengths int64 [S * B])`` with
    ``lengths[s * B + b]`` the size of slice ``s`` for user ``b``; slice ``s`` emits ``ids[prog_i[s, TABLE]]``.
    """
    keep, weight = slice_membership(offsets, ts, cats, floats, request_ts, prog_i, prog_f)
    s_count, n = keep.shape
    b = offsets.numel() - 1
    user = torch.repeat_interleave(torch.arange(b, device=ts.device), offsets.diff(), output_size=n)
    ids_by_slice = (
        torch.stack(list(ids))[prog_i[:, P.TABLE]] if s_count else torch.empty(0, n, dtype=torch.int64, device=ts.device)
    )
    values = ids_by_slice[keep]
    weights = weight[keep]
    lengths = torch.zeros(s_count, b, dtype=torch.int64, device=ts.device)
    lengths.index_put_((torch.nonzero(keep)[:, 0], user.expand(s_count, n)[keep]), torch.ones_like(values), accumulate=True)
    return values, weights, lengths.reshape(-1)


def sliced_pool(
    tables: list[torch.Tensor],
    ids: list[torch.Tensor],
    offsets: torch.Tensor,
    ts: torch.Tensor,
    cats: torch.Tensor,
    floats: torch.Tensor,
    request_ts: torch.Tensor,
    prog_i: torch.Tensor,
    prog_f: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slice then pool: ``pooled [B, S, D]`` (the tables' dtype) and ``weight_sum float32 [B, S]``.

    ``pooled[b, s]`` is the weighted mean of ``tables[t][ids[t][e]]`` (``t = prog_i[s, TABLE]``) over user
    ``b``'s events ``e`` kept by slice ``s``; an empty slice pools to zeros.
    """
    keep, weight = slice_membership(offsets, ts, cats, floats, request_ts, prog_i, prog_f)
    s_count, n = keep.shape
    b = offsets.numel() - 1
    d = tables[0].shape[1]
    acc = _acc_dtype(tables[0].dtype)
    user = torch.repeat_interleave(torch.arange(b, device=ts.device), offsets.diff(), output_size=n)
    w = torch.where(keep, weight, 0.0).to(acc)  # [S, N]
    pooled = torch.zeros(b, s_count, d, dtype=acc, device=ts.device)
    wsum = torch.zeros(b, s_count, dtype=acc, device=ts.device).index_add_(0, user, w.t())
    starts = offsets.tolist()
    for t, (table, t_ids) in enumerate(zip(tables, ids)):
        sel = (prog_i[:, P.TABLE] == t).nonzero()[:, 0]
        if sel.numel() == 0:
            continue
        w_t = w[sel]  # [S_t, N]
        for u in range(b):
            lo, hi = starts[u], starts[u + 1]
            rows = table.index_select(0, t_ids[lo:hi]).to(acc)  # [n_u, D]
            pooled[u, sel] = w_t[:, lo:hi] @ rows
    out = torch.where(wsum[..., None] > 0, pooled / wsum.clamp_min(torch.finfo(acc).tiny)[..., None], 0.0)
    return out.to(tables[0].dtype), wsum.float()


__all__ = [
    "int4_dequantize",
    "int4_quantize",
    "jagged_mean_pool",
    "slice_membership",
    "slice_timeline",
    "sliced_pool",
    "token_pool",
]

