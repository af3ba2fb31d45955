"""Triton kernels for the fused sliced pooling (docs/design.md#slices and #ops-contract, paper eq. 2–6): ``dv365::sliced_pool_triton``
and its backward ops ``sliced_pool_backward_triton`` (dense table grads) and
``sliced_pool_backward_rows_triton`` (per-event rows), same schemas and semantics as the native ops
(:func:`dv365_ops.reference.sliced_pool`, program layout in :mod:`dv365_ops.program`).

With ``W[s, e]`` the weight of event ``e`` in slice ``s`` (0 when the slice program drops it, the debiased
score ``log1p(dwell) / log1p(GAMMA * duration)`` for weighted slices, else 1; membership and score evaluated
in float64, the weight rounded to float32) and ``t(s) = prog_i[s, TABLE]``::

    weight_sum[b, s] = sum_{e in b} W[s, e]
    pooled[b, s]     = sum_{e in b} W[s, e] * tables[t(s)][ids[t(s)][e]] / weight_sum[b, s]   (0 when empty)
    rows_t[e]        = sum_{s : t(s) = t} W[s, e] * grad[b, s] / weight_sum[b, s]             (backward_rows)
    dense_t[i]       = sum_{e : ids[t][e] = i} rows_t[e]                                      (backward)

Forward: one launch per table; one program per (user, run of ``EPP`` events, block of ``BLOCK_S`` of the
table's slices, block of ``BLOCK_D`` columns). The slices run in the order of the program's plan
(``dv365::plan_slices``, the grouping every backend uses): table by table and group by group, so a program's
block holds slices of one table only, the slices of a group side by side, and the float64 dwell / ratio / score
code runs only in blocks that have such slices. For each chunk of ``BLOCK_E`` events the program loads ids / ts / cats /
floats once, evaluates the membership tile ``W [BLOCK_S, BLOCK_E]`` in registers (never in memory), skips
the chunk when no slice keeps any of its events (a chunk outside every window of the block: histories are
sorted by time, so most chunks older than a 3- or 7-day window skip), else gathers the chunk's rows
``[BLOCK_E, BLOCK_D]`` once and accumulates ``W @ rows`` with ``tl.dot`` (``input_precision="tf32x3"``:
three TF32 tensor-core products, fp32-accurate; ``DV365_TRITON_DOT_PRECISION=ieee|tf32``, read once, trades). At the
end it atomically adds its ``[BLOCK_S, BLOCK_D]`` partial sum into an fp32 ``[B, S, D]`` accumulator (and
its weight sums into ``[B, S]``); a last elementwise pass divides. float64 tables (gradcheck) use an
outer-product accumulation instead of ``tl.dot``.

Backward: one launch per table; one program per (user, run of events, block of columns), looping over the
table's slice blocks (one when the table has at most ``BLOCK_S`` slices) and, inside, over chunks of
events: each chunk's gradient rows ``W^T @ (grad / weight_sum)`` are stored directly for the rows variant
(the program owns those rows: no atomics), atomically added into the fp32 dense table gradient at
``ids[t][e]`` for the dense variant.

The plan is built on the host once per program (keyed by the program tensors' storage, view and version: see
``_plan_of``), which reads the program (one synchronization for a program on the GPU) and checks its entries.
Data-dependent checks (offsets, id ranges, categorical values) and the exact grid size (the longest history) need
one device read; under CUDA graph capture they are skipped and the grid takes upper bounds (programs with no work
exit at once), and the program must have run once before (its plan cannot be built while capturing).
"""

from __future__ import annotations

import collections
import functools
import os
import re
import threading

import torch
import triton
import triton.language as tl

from .. import program as P
from .. import slicing as _family
from . import _util

if not _util.INTERPRET:
    from triton.language.extra import libdevice

_PRECISIONS = ("tf32x3", "ieee", "tf32")

# The program layout (program.py, the one place it is defined) as compile-time constants: a Triton kernel
# reads only globals that are tl.constexpr.
_NUM_INT = tl.constexpr(P.NUM_INT)
_NUM_FLOAT = tl.constexpr(P.NUM_FLOAT)
_WIN_LO = tl.constexpr(P.WIN_LO)
_WIN_HI = tl.constexpr(P.WIN_HI)
_FLAGS = tl.constexpr(P.FLAGS)
_CAT_FIELD0, _CAT_FIELD1, _CAT_FIELD2 = (tl.constexpr(c) for c in P.CAT_FIELD)
_CAT_MASK0, _CAT_MASK1, _CAT_MASK2 = (tl.constexpr(c) for c in P.CAT_MASK)
_DWELL_LO = tl.constexpr(P.DWELL_LO)
_DWELL_HI = tl.constexpr(P.DWELL_HI)
_RATIO_LO = tl.constexpr(P.RATIO_LO)
_RATIO_HI = tl.constexpr(P.RATIO_HI)
_BETA = tl.constexpr(P.BETA)
_GAMMA = tl.constexpr(P.GAMMA)
_S0 = tl.constexpr(P.S0)
_WEIGHTED = tl.constexpr(P.WEIGHTED)
_DWELL_FILTER = tl.constexpr(P.DWELL_FILTER)
_RATIO_FILTER = tl.constexpr(P.RATIO_FILTER)
_ALL_FLAGS = tl.constexpr(P.ALL_FLAGS)
_MAX_SCORE = tl.constexpr(P.MAX_SCORE)
_FLOAT_DURATION = tl.constexpr(P.FLOAT_DURATION)
_FLOAT_DWELL = tl.constexpr(P.FLOAT_DWELL)


@functools.cache
def _dot_precision() -> str:
    """``DV365_TRITON_DOT_PRECISION``, read on the first call (a process's kernels use one precision)."""
    precision = os.environ.get("DV365_TRITON_DOT_PRECISION", "tf32x3")
    if precision not in _PRECISIONS:
        raise ValueError(f"DV365_TRITON_DOT_PRECISION must be one of {_PRECISIONS}, got {precision!r}")
    return precision


def _config(dtype: torch.dtype, slices_per_table: int, d: int, backward: bool = False) -> dict:
    """Block sizes. GPU: a table's slices in one block (up to 128) and whole rows (up to 256 columns), so
    the membership tile is evaluated once per event and each row is gathered once: a fp32 accumulator of
    up to 128 x 256 spread over 16 warps (64 registers a thread); 32 events a chunk (the dot's K); 2048
    events a program (W40K: ~650 programs per table for 132 SMs, few atomic partial sums).
    The backward takes at most 128 columns: its dot's ``[BLOCK_S, BLOCK_D]`` operand (``grad / weight_sum``)
    must fit in shared memory (256 columns asked 256 KB of the H200's 227 KB).
    The interpreter gets tiny blocks so that small tests cross every block boundary."""
    use_dot = dtype != torch.float64
    if _util.INTERPRET:
        return dict(BLOCK_S=8, BLOCK_E=16, BLOCK_D=16, EPP=32, num_warps=4, USE_DOT=use_dot)
    if not use_dot:
        return dict(BLOCK_S=16, BLOCK_E=16, BLOCK_D=16, EPP=2048, num_warps=4, USE_DOT=False)
    block_s = min(max(triton.next_power_of_2(max(slices_per_table, 1)), 16), 128)
    block_d = min(max(triton.next_power_of_2(max(d, 1)), 16), 256)
    if backward:
        block_d = min(block_d, 128)
    # registers: the forward's accumulator and the backward's grad / weight_sum tile are [BLOCK_S, BLOCK_D]
    tile = block_s * block_d
    return dict(
        BLOCK_S=block_s, BLOCK_E=32, BLOCK_D=block_d, EPP=2048,
        num_warps=16 if tile >= 32768 else 8 if tile >= 8192 else 4, USE_DOT=True,
    )


@triton.jit
def _log1p(x, INTERPRET: tl.constexpr):
    if INTERPRET:
        # libdevice is not available to the interpreter: Goldberg's log1p, within a few ulps
        u = 1.0 + x
        return tl.where(u == 1.0, x, tl.log(u) * (x / (u - 1.0)))
    else:
        return libdevice.log1p(x)


@triton.jit
def _pow(x, y, INTERPRET: tl.constexpr):
    # beta = 1 and 0.5 exactly as the reference (pow(-0, 0.5) = +0, hence the abs)
    if INTERPRET:
        return tl.where(y == 1.0, x, tl.where(y == 0.5, tl.abs(tl.sqrt(x)), tl.where(y == 0.0, 1.0, tl.exp(y * tl.log(x)))))
    else:
        return tl.where(y == 1.0, x, tl.where(y == 0.5, tl.abs(libdevice.sqrt(x)), libdevice.pow(x, y)))


@triton.jit
def _slice_params(prog_i, prog_f, order, si, s_ok):
    """The program rows of the slices at positions ``si`` of the plan's order."""
    s = tl.load(order + si, mask=s_ok, other=0)
    pi = prog_i + s * _NUM_INT
    pf = prog_f + s * _NUM_FLOAT
    win_lo = tl.load(pi + _WIN_LO, mask=s_ok, other=0)
    win_hi = tl.load(pi + _WIN_HI, mask=s_ok, other=0)
    flags = tl.load(pi + _FLAGS, mask=s_ok, other=0)
    f0 = tl.load(pi + _CAT_FIELD0, mask=s_ok, other=-1)
    m0 = tl.load(pi + _CAT_MASK0, mask=s_ok, other=0)
    f1 = tl.load(pi + _CAT_FIELD1, mask=s_ok, other=-1)
    m1 = tl.load(pi + _CAT_MASK1, mask=s_ok, other=0)
    f2 = tl.load(pi + _CAT_FIELD2, mask=s_ok, other=-1)
    m2 = tl.load(pi + _CAT_MASK2, mask=s_ok, other=0)
    dlo = tl.load(pf + _DWELL_LO, mask=s_ok, other=0.0)
    dhi = tl.load(pf + _DWELL_HI, mask=s_ok, other=0.0)
    rlo = tl.load(pf + _RATIO_LO, mask=s_ok, other=0.0)
    rhi = tl.load(pf + _RATIO_HI, mask=s_ok, other=0.0)
    beta = tl.load(pf + _BETA, mask=s_ok, other=0.0)
    gamma = tl.load(pf + _GAMMA, mask=s_ok, other=0.0)
    s0 = tl.load(pf + _S0, mask=s_ok, other=0.0)
    return s, win_lo, win_hi, flags, f0, m0, f1, m1, f2, m2, dlo, dhi, rlo, rhi, beta, gamma, s0


@triton.jit
def _cat_filter(keep, cats, stride_c, e, e_ok, field, mask, used, NUM_CATS: tl.constexpr):
    """``keep & (field < 0 | (mask >> cats[clamp(field, 0, C - 1), e]) & 1)``, skipped when no slice of the
    block uses the filter. The 64-bit mask is tested as two 32-bit words (64-bit shifts are emulated)."""
    if used:
        f = tl.minimum(tl.maximum(field, 0), NUM_CATS - 1)
        v = tl.zeros([field.shape[0], e.shape[0]], tl.int32)
        for c in tl.static_range(NUM_CATS):
            row = tl.load(cats + c * stride_c + e, mask=e_ok, other=0).to(tl.int32)
            v = tl.where((f == c)[:, None], row[None, :], v)
        lo = (mask & 0xFFFFFFFF).to(tl.int32)[:, None]
        hi = (mask >> 32).to(tl.int32)[:, None]
        bit = (tl.where(v < 32, lo, hi) >> (v & 31)) & 1
        keep &= (field < 0)[:, None] | (bit != 0)
    return keep


@triton.jit
def _uniform(values, used):
    """(whether ``values`` agree over the ``used`` slices, that common value)."""
    lo = tl.min(tl.where(used, values, float("inf")))
    hi = tl.max(tl.where(used, values, float("-inf")))
    return lo == hi, lo


@triton.jit
def _membership(
    e, e_ok, req, ts, cats, stride_c, floats, stride_f, s_ok,
    win_lo, win_hi, flags, f0, m0, f1, m1, f2, m2, dlo, dhi, rlo, rhi, beta, gamma, s0,
    block,
    NUM_CATS: tl.constexpr, HAS_FLOATS: tl.constexpr, INTERPRET: tl.constexpr,
):
    """``W [BLOCK_S, BLOCK_E]`` (float32, 0 where dropped) and whether any pair is kept (program.py).

    The float64 powers and logarithms depend on the event and on BETA / GAMMA only: when the block's ratio
    (weighted) slices share one BETA (GAMMA), as compiled specs do, they are computed once per event."""
    use_f0, use_f1, use_f2, has_dwell, has_ratio, has_weighted, beta_same, beta_one, gamma_same, gamma_one = block
    dt = req - tl.load(ts + e, mask=e_ok, other=0)
    keep = (dt[None, :] > win_lo[:, None]) & (dt[None, :] <= win_hi[:, None]) & e_ok[None, :] & s_ok[:, None]
    if NUM_CATS == 0:
        keep &= ((f0 < 0) & (f1 < 0) & (f2 < 0))[:, None]
    else:
        keep = _cat_filter(keep, cats, stride_c, e, e_ok, f0, m0, use_f0, NUM_CATS)
        keep = _cat_filter(keep, cats, stride_c, e, e_ok, f1, m1, use_f1, NUM_CATS)
        keep = _cat_filter(keep, cats, stride_c, e, e_ok, f2, m2, use_f2, NUM_CATS)
    weight = tl.full(keep.shape, 1.0, tl.float32)
    if HAS_FLOATS:
        if tl.max(keep.to(tl.int32)) > 0:
            dur_e = tl.load(floats + _FLOAT_DURATION * stride_f + e, mask=e_ok, other=0.0).to(tl.float64)
            dwell_e = tl.load(floats + _FLOAT_DWELL * stride_f + e, mask=e_ok, other=0.0).to(tl.float64)
            # outside its domain a field is unknown, read as NaN (program.py): a dwell must be finite and >= 0,
            # a duration finite and > 0 (0, a photo, has no ratio and no score)
            dur_e = tl.where((dur_e > 0.0) & (dur_e < float("inf")), dur_e, float("nan"))
            dwell_e = tl.where((dwell_e >= 0.0) & (dwell_e < float("inf")), dwell_e, float("nan"))
            dur = dur_e[None, :]
            dwell = dwell_e[None, :]
            if has_dwell:
                in_dwell = (dwell >= dlo[:, None]) & (dwell <= dhi[:, None])
                keep &= ((flags & _DWELL_FILTER) == 0)[:, None] | in_dwell
            if has_ratio:
                is_ratio = (flags & _RATIO_FILTER) != 0
                if beta_same:
                    ratio = tl.broadcast_to((dwell_e / _pow(dur_e, beta_one, INTERPRET))[None, :], keep.shape)
                else:
                    ratio = dwell / _pow(dur, beta[:, None], INTERPRET)
                keep &= ~is_ratio[:, None] | ((ratio >= rlo[:, None]) & (ratio <= rhi[:, None]))
            if has_weighted:
                weighted = (flags & _WEIGHTED) != 0
                if gamma_same:
                    denom_e = _log1p(gamma_one * dur_e, INTERPRET)
                    denom = tl.broadcast_to(denom_e[None, :], keep.shape)
                    score = tl.broadcast_to((_log1p(dwell_e, INTERPRET) / denom_e)[None, :], keep.shape)
                else:
                    denom = _log1p(gamma[:, None] * dur, INTERPRET)
                    score = _log1p(dwell, INTERPRET) / denom
                keep &= ~weighted[:, None] | ((denom > 0) & (score > s0[:, None]))
                weight = tl.where(weighted[:, None] & keep, tl.minimum(score, _MAX_SCORE), 1.0).to(tl.float32)
    else:
        keep &= ((flags & _ALL_FLAGS) == 0)[:, None]
    return tl.where(keep, weight, 0.0), tl.max(keep.to(tl.int32)) > 0


@triton.jit
def _block_summary(f0, f1, f2, flags, beta, gamma, s_ok):
    """What the block's slices use, reduced once per block rather than per chunk: categorical filters,
    dwell / ratio / weighted flags, and whether the ratio (weighted) slices share one BETA (GAMMA)."""
    f = tl.where(s_ok, flags, 0)
    beta_same, beta_one = _uniform(beta, ((f & _RATIO_FILTER) != 0) & s_ok)
    gamma_same, gamma_one = _uniform(gamma, ((f & _WEIGHTED) != 0) & s_ok)
    return (
        tl.max(f0) >= 0, tl.max(f1) >= 0, tl.max(f2) >= 0,
        tl.max(f & _DWELL_FILTER) > 0, tl.max(f & _RATIO_FILTER) > 0, tl.max(f & _WEIGHTED) > 0,
        beta_same, beta_one, gamma_same, gamma_one,
    )


# the scalars that vary from call to call (table index, slice count, splits, the cats / floats row strides) are not
# specialized on (Triton would compile a variant per "== 1" and "% 16 == 0" of each); D and the row strides are,
# for vector loads
_VARYING = ["t", "S", "SPLIT", "EPP", "stride_c", "stride_f"]


@triton.jit(do_not_specialize=_VARYING)
def _forward_kernel(
    table, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, order, table_start, acc_out, wsum_out,
    t, S, D, SPLIT, EPP, stride_t, stride_c, stride_f,
    NUM_CATS: tl.constexpr,  # rows of cats (categorical fields), unrolled
    HAS_FLOATS: tl.constexpr,  # floats has the duration/dwell rows
    USE_DOT: tl.constexpr,  # tl.dot (fp32/bf16/fp16 tables) or outer products (fp64)
    PRECISION: tl.constexpr,
    INTERPRET: tl.constexpr,
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 tables
    BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0) // SPLIT
    lo = tl.load(offsets + b) + (tl.program_id(0) % SPLIT) * EPP
    hi = tl.minimum(lo + EPP, tl.load(offsets + b + 1))
    s_lo = tl.load(table_start + t) + tl.program_id(1) * BLOCK_S
    s_hi = tl.load(table_start + t + 1)
    if (lo >= hi) | (s_lo >= s_hi):
        return
    si = s_lo + tl.arange(0, BLOCK_S)
    s_ok = si < s_hi
    s, win_lo, win_hi, flags, f0, m0, f1, m1, f2, m2, dlo, dhi, rlo, rhi, beta, gamma, s0 = _slice_params(
        prog_i, prog_f, order, si, s_ok)
    block = _block_summary(f0, f1, f2, flags, beta, gamma, s_ok)
    req = tl.load(request_ts + b)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    acc = tl.zeros([BLOCK_S, BLOCK_D], ACC)
    wacc = tl.zeros([BLOCK_S], ACC)
    for start in range(lo, hi, BLOCK_E):
        e = start + tl.arange(0, BLOCK_E)
        e_ok = e < hi
        w, any_kept = _membership(
            e, e_ok, req, ts, cats, stride_c, floats, stride_f, s_ok,
            win_lo, win_hi, flags, f0, m0, f1, m1, f2, m2, dlo, dhi, rlo, rhi, beta, gamma, s0,
            block, NUM_CATS, HAS_FLOATS, INTERPRET)
        # a chunk no slice of the block keeps (outside every window, most chunks of a long history) gathers nothing
        if any_kept:
            idx = tl.load(ids + e, mask=e_ok, other=0).to(tl.int64)
            rows = tl.load(table + idx[:, None] * stride_t + d[None, :], mask=e_ok[:, None] & d_ok[None, :], other=0.0)
            wa = w.to(ACC)
            if USE_DOT:
                acc = tl.dot(wa, rows.to(ACC), acc, input_precision=PRECISION)
            else:
                acc += tl.sum(wa[:, :, None] * rows.to(ACC)[None, :, :], axis=1)
            wacc += tl.sum(wa, axis=1)
    out_row = (b * S + s).to(tl.int64)
    tl.atomic_add(acc_out + out_row[:, None] * D + d[None, :], acc, mask=s_ok[:, None] & d_ok[None, :])
    if tl.program_id(2) == 0:
        tl.atomic_add(wsum_out + out_row, wacc, mask=s_ok)


@triton.jit(do_not_specialize=_VARYING)
def _backward_kernel(
    grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, order, table_start, out,
    t, S, D, SPLIT, EPP, stride_c, stride_f, stride_o,
    NUM_CATS: tl.constexpr, HAS_FLOATS: tl.constexpr, USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
    INTERPRET: tl.constexpr, ACC: tl.constexpr,
    DENSE: tl.constexpr,  # True: atomically add rows into out[ids[e]]; False: store them at out[e]
    BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0) // SPLIT
    lo = tl.load(offsets + b) + (tl.program_id(0) % SPLIT) * EPP
    hi = tl.minimum(lo + EPP, tl.load(offsets + b + 1))
    if lo >= hi:
        return
    t_lo = tl.load(table_start + t)
    t_hi = tl.load(table_start + t + 1)
    req = tl.load(request_ts + b)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    # slice blocks outside (one for up to BLOCK_S slices a table), events inside: the block's program rows
    # and its grad / weight_sum tile are loaded once; the program owns its events' output rows, so a
    # second slice block adds to them without atomics
    for s_lo in range(t_lo, t_hi, BLOCK_S):
        si = s_lo + tl.arange(0, BLOCK_S)
        s_ok = si < t_hi
        s, win_lo, win_hi, flags, f0, m0, f1, m1, f2, m2, dlo, dhi, rlo, rhi, beta, gamma, s0 = _slice_params(
            prog_i, prog_f, order, si, s_ok)
        block = _block_summary(f0, f1, f2, flags, beta, gamma, s_ok)
        gi = (b * S + s).to(tl.int64)
        ws = tl.load(weight_sum + gi, mask=s_ok, other=0.0).to(ACC)
        g = tl.load(grad + gi[:, None] * D + d[None, :], mask=s_ok[:, None] & d_ok[None, :], other=0.0)
        g = tl.where(ws[:, None] > 0, g.to(ACC) / ws[:, None], 0.0)
        first = s_lo == t_lo
        for start in range(lo, hi, BLOCK_E):
            e = start + tl.arange(0, BLOCK_E)
            e_ok = e < hi
            w, any_kept = _membership(
                e, e_ok, req, ts, cats, stride_c, floats, stride_f, s_ok,
                win_lo, win_hi, flags, f0, m0, f1, m1, f2, m2, dlo, dhi, rlo, rhi, beta, gamma, s0,
                block, NUM_CATS, HAS_FLOATS, INTERPRET)
            rows = tl.zeros([BLOCK_E, BLOCK_D], ACC)
            if any_kept:
                wa = w.to(ACC)
                if USE_DOT:
                    rows = tl.dot(tl.trans(wa), g, rows, input_precision=PRECISION)
                else:
                    rows = tl.sum(wa[:, :, None] * g[:, None, :], axis=0)
            mask = e_ok[:, None] & d_ok[None, :]
            if DENSE:
                if any_kept:
                    idx = tl.load(ids + e, mask=e_ok, other=0).to(tl.int64)
                    tl.atomic_add(out + idx[:, None] * stride_o + d[None, :], rows.to(out.dtype.element_ty), mask=mask)
            else:
                dst = out + e.to(tl.int64)[:, None] * stride_o + d[None, :]
                if first:
                    tl.store(dst, rows.to(out.dtype.element_ty), mask=mask)
                else:
                    prev = tl.load(dst, mask=mask, other=0.0).to(ACC)
                    tl.store(dst, (prev + rows).to(out.dtype.element_ty), mask=mask)


class _ProgramPlan:
    """A program's plan as the kernels read it, on the program's device: the slices in plan order (``order``),
    where each table's slices start in it (``table_start``, ``[T + 1]``) and the slice count of each table
    (``counts``, host ints: the grids' sizes). ``programs`` holds the program tensors, so that their storage cannot
    be reused by another program while the entry lives."""

    __slots__ = ("order", "table_start", "counts", "programs")

    def __init__(self, order, table_start, counts, programs):
        self.order, self.table_start, self.counts, self.programs = order, table_start, counts, programs


# the most recently used plans, keyed by the program tensors' data (storage, view, dtype) and version counters
_PLANS: collections.OrderedDict = collections.OrderedDict()
_PLANS_LOCK = threading.Lock()
_MAX_PLANS = 64
_PLAN_ERROR = re.compile(r"dv365::plan_slices: (.*)")
_plans_made = 0  # entries made (tests count them to see that the kept ones are used)


def _data_key(x: torch.Tensor) -> tuple:
    # a view of the same storage with the same geometry and dtype is the same program (MultiSlicePooling passes a
    # fresh float64 view of its int64 prog_f buffer every call); views share their base's version counter
    return (x.untyped_storage().data_ptr(), x.device, x.dtype, x.storage_offset(), tuple(x.shape), x.stride(),
            x._version)


def _plan_of(op: str, prog_i, prog_f, num_tables: int, num_cats: int, num_floats: int, capturing: bool):
    """The program's plan, built by ``dv365::plan_slices`` the first time this program (these tensors' data at
    these versions) meets these table, categorical and float counts, then kept. Raises plan_slices' error for an
    invalid program. Inference tensors have no version counter: their plan is built every call."""
    key = None
    if not (prog_i.is_inference() or prog_f.is_inference()):
        key = (_data_key(prog_i), _data_key(prog_f), num_tables, num_cats, num_floats)
        with _PLANS_LOCK:
            hit = _PLANS.get(key)
            if hit is not None:
                _PLANS.move_to_end(key)
                return hit
    if capturing:
        raise RuntimeError(
            f"dv365::{op}: this slice program has no plan yet, and its plan is built on the host, which a CUDA graph "
            f"capture forbids: run the op once with this program before capturing it")
    # the device program itself: the compiled plan cache reads it on the host once and keys it as the native
    # CUDA op does, so both backends share one plan per program
    plan_i, _ = torch.ops.dv365.plan_slices(prog_i.detach(), prog_f.detach(), num_tables, num_cats, num_floats)
    sec = P.plan_sections(plan_i)
    device = prog_i.device
    entry = _ProgramPlan(sec["group_slices"].to(device), sec["table_slices"].to(device),
                         sec["table_slices"].diff().tolist(), (prog_i, prog_f))
    global _plans_made
    _plans_made += 1
    if key is not None:
        with _PLANS_LOCK:
            _PLANS[key] = entry
            while len(_PLANS) > _MAX_PLANS:
                _PLANS.popitem(last=False)
    return entry


class _Plan:
    """What every launch needs: contiguous inputs, the program's plan (its slice order and the slice count of each
    table), and the grid's event split (exact after the checks' device read, an upper bound under graph capture)."""

    def __init__(self, op, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, num_rows, dtype):
        self.dtype = dtype
        self.ids = [i.contiguous() for i in ids]
        self.offsets, self.ts, self.request_ts = offsets.contiguous(), ts.contiguous(), request_ts.contiguous()
        self.cats = cats.contiguous()
        self.floats = floats.contiguous()
        self.prog_i, self.prog_f = prog_i.contiguous(), prog_f.contiguous()
        self.num_tables, self.b, self.s, self.n = len(ids), offsets.numel() - 1, prog_i.shape[0], ts.numel()
        self.max_len = self.n
        self.exact = _util.checks_enabled(ts.device)  # max_len read from the device, not a bound
        num_cats, num_floats = self.cats.shape[0], self.floats.shape[0]
        plan_error = None
        try:
            plan = _plan_of(op, prog_i, prog_f, self.num_tables, num_cats, num_floats, capturing=not self.exact)
        except RuntimeError as e:
            # an invalid program entry is reported in the compiled kernels' order: after the timeline's checks
            m = _PLAN_ERROR.match(str(e).split("\n")[0])
            if m is None or not self.exact:
                raise
            plan_error, plan = m[1], None
        if plan is not None:
            self.order, self.table_start, self.counts = plan.order, plan.table_start, plan.counts
        if not self.exact:
            return
        o = self.offsets
        # the compiled kernels' checks, in their order and with their messages; a message's details (which user,
        # event or slice) are read only when its check fails
        decreasing = o.diff() < 0
        failures = [
            ((o[0] != 0) | (o[-1] != self.n), lambda: f"offsets must start at 0 and end at N={self.n} (ts.numel()), "
             f"got {int(o[0])} .. {int(o[-1])}"),
            (decreasing.any(), lambda: f"offsets must be non-decreasing (user {_util.first_true(decreasing)})"),
        ]
        if self.n > 1:
            starts = torch.zeros(self.n, dtype=torch.bool, device=ts.device)
            starts[o[:-1].clamp(max=self.n - 1)] = True
            descending = (self.ts.diff() < 0) & ~starts[1:]

            def descending_message():
                e = _util.first_true(descending) + 1
                b = int(torch.searchsorted(o, e, right=True)) - 1
                return f"ts must be ascending within each user (user {b}, event {e - int(o[b])})"

            failures.append((descending.any(), descending_message))
        if self.cats.numel():
            bad_cat = (self.cats < 0) | (self.cats > P.MAX_CAT_VALUE)

            def cat_message():
                i = _util.first_true(bad_cat)
                return f"cats values must lie in [0, {P.MAX_CAT_VALUE}], got {int(self.cats.view(-1)[i])} " \
                       f"(row {i // self.n}, event {i % self.n})"

            failures.append((bad_cat.any(), cat_message))
        failures.append((torch.full((), plan_error is not None, device=ts.device), lambda: plan_error))

        def range_message(t, ids_t, rows, bad):
            def message():
                e = _util.first_true(bad)
                return f"ids[{t}][{e}] = {int(ids_t[e])} is out of range for a table of {rows} rows"
            return message

        for t, (i, r) in enumerate(zip(self.ids, num_rows)):
            if i.numel():
                out_of_range = (i < 0) | (i >= r)
                failures.append((out_of_range.any(), range_message(t, i, r, out_of_range)))
        longest = o.diff().max().reshape(1) if self.b else o.new_zeros(1)
        (self.max_len,) = _util.raise_failed(op, failures, longest)

    def common(self, cfg: dict) -> dict:
        return dict(
            NUM_CATS=self.cats.shape[0], HAS_FLOATS=self.floats.shape[0] >= 2, USE_DOT=cfg["USE_DOT"],
            PRECISION=_dot_precision(), INTERPRET=_util.INTERPRET,
            ACC=tl.float64 if self.dtype == torch.float64 else tl.float32,
            BLOCK_S=cfg["BLOCK_S"], BLOCK_E=cfg["BLOCK_E"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"],
        )

    def split(self, cfg: dict) -> int:
        return max(1, triton.cdiv(self.max_len, cfg["EPP"]))


def sliced_pool(
    tables: list[torch.Tensor], ids: list[torch.Tensor], offsets: torch.Tensor, ts: torch.Tensor,
    cats: torch.Tensor, floats: torch.Tensor, request_ts: torch.Tensor, prog_i: torch.Tensor,
    prog_f: torch.Tensor, sparse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    op = "sliced_pool"
    # the native op's checks, with its messages (the family's, shared with the fakes)
    _family._check_sliced_pool(tables, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f)
    _util.check_device(op, ts)
    plan = _Plan(op, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, [t.shape[0] for t in tables], tables[0].dtype)
    acc, wsum = _pool(plan, tables)
    acc_dtype = acc.dtype
    pooled = torch.where(wsum[..., None] > 0, acc / wsum.clamp_min(torch.finfo(acc_dtype).tiny)[..., None], 0.0)
    return pooled.to(tables[0].dtype), wsum.float()


def _pool(plan: "_Plan", tables: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward's sums in the accumulation dtype: numerators [B, S, D] and weight sums [B, S]."""
    ts = plan.ts
    dtype, d = tables[0].dtype, tables[0].shape[1]
    acc_dtype = _util.acc_dtype(dtype)
    acc = torch.zeros(plan.b, plan.s, d, dtype=acc_dtype, device=ts.device)
    wsum = torch.zeros(plan.b, plan.s, dtype=acc_dtype, device=ts.device)
    if plan.b and plan.s and plan.n:
        for t, tab in enumerate(tables):
            cfg = _config(dtype, plan.counts[t], d)
            if plan.counts[t] == 0 or d == 0:
                continue
            tab = tab if tab.stride(1) == 1 else tab.contiguous()
            split = plan.split(cfg)
            grid = (plan.b * split, triton.cdiv(plan.counts[t], cfg["BLOCK_S"]), max(1, triton.cdiv(d, cfg["BLOCK_D"])))
            _forward_kernel[grid](
                tab, plan.ids[t], plan.offsets, plan.ts, plan.cats, plan.floats, plan.request_ts, plan.prog_i,
                plan.prog_f, plan.order, plan.table_start, acc, wsum,
                t, plan.s, d, split, cfg["EPP"], tab.stride(0), plan.cats.stride(0), plan.floats.stride(0),
                **plan.common(cfg),
            )
    return acc, wsum


def _backward(op, grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, num_rows):
    _family._check_backward(op, grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, num_rows)
    _util.check_device(op, ts)
    s = prog_i.shape[0]
    dense = num_rows is not None
    plan = _Plan(op, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, num_rows or [2**63 - 1] * len(ids), grad.dtype)
    d = grad.shape[2]
    grad, weight_sum = grad.contiguous(), weight_sum.contiguous()
    if grad.dtype == torch.float64:
        # float64 recomputes the weight sums in float64, as the compiled kernels do: the forward's weight_sum output
        # is rounded to float32 (the sums of a one-column zero table that every id reads through a zero row stride)
        zero = torch.zeros(1, 1, dtype=torch.float64, device=ts.device).expand(2**62, 1)
        weight_sum = _pool(plan, [zero] * plan.num_tables)[1]
    acc_dtype = _util.acc_dtype(grad.dtype)
    outs = []
    for t in range(plan.num_tables):
        if dense:
            out = torch.zeros(num_rows[t], d, dtype=acc_dtype, device=ts.device)
        elif plan.exact and plan.counts[t]:
            out = torch.empty(plan.n, d, dtype=grad.dtype, device=ts.device)  # the kernel writes every row
        else:
            out = torch.zeros(plan.n, d, dtype=grad.dtype, device=ts.device)
        cfg = _config(grad.dtype, plan.counts[t], d, backward=True)
        if plan.b and plan.n and d:
            split = plan.split(cfg)
            _backward_kernel[(plan.b * split, triton.cdiv(d, cfg["BLOCK_D"]))](
                grad, weight_sum, plan.ids[t], plan.offsets, plan.ts, plan.cats, plan.floats, plan.request_ts,
                plan.prog_i, plan.prog_f, plan.order, plan.table_start, out,
                t, s, d, split, cfg["EPP"], plan.cats.stride(0), plan.floats.stride(0), out.stride(0),
                DENSE=dense, **plan.common(cfg),
            )
        outs.append(out.to(grad.dtype))
    return outs


def sliced_pool_backward(
    grad: torch.Tensor, weight_sum: torch.Tensor, ids: list[torch.Tensor], offsets: torch.Tensor, ts: torch.Tensor,
    cats: torch.Tensor, floats: torch.Tensor, request_ts: torch.Tensor, prog_i: torch.Tensor, prog_f: torch.Tensor,
    num_rows: list[int],
) -> list[torch.Tensor]:
    return _backward("sliced_pool_backward", grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i,
                     prog_f, list(num_rows))


def sliced_pool_backward_rows(
    grad: torch.Tensor, weight_sum: torch.Tensor, ids: list[torch.Tensor], offsets: torch.Tensor, ts: torch.Tensor,
    cats: torch.Tensor, floats: torch.Tensor, request_ts: torch.Tensor, prog_i: torch.Tensor, prog_f: torch.Tensor,
) -> list[torch.Tensor]:
    return _backward("sliced_pool_backward_rows", grad, weight_sum, ids, offsets, ts, cats, floats, request_ts,
                     prog_i, prog_f, None)


# fakes and autograd are the family's (dv365_ops/slicing.py), shared with the native ops; its backward
# resolves the backward ops through ``_backend.resolve``, so backend "triton" runs the backward here too
for _name in ("sliced_pool", "sliced_pool_backward", "sliced_pool_backward_rows"):
    _util.define(_name, globals()[_name], getattr(_family, f"_fake_{_name}"))
torch.library.register_autograd(
    "dv365::sliced_pool_triton", _family._backward_sliced_pool, setup_context=_family._setup_context_sliced_pool
)
