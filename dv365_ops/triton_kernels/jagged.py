"""Triton kernels for jagged weighted mean pooling (docs/design.md#ops-contract): ``dv365::jagged_mean_pool_triton`` and its
two backward ops, same schemas and semantics as the native ops (:func:`dv365_ops.reference.jagged_mean_pool`).

Forward, bag ``m = [offsets[m], offsets[m+1])``::

    out[m] = sum_i w_i * table[ids_i] / sum_i w_i        (zeros when the bag is empty or sum_i w_i == 0)

Backward, with ``c_i = w_i / sum_j w_j`` for event ``i`` of bag ``m`` (0 when the bag's weights sum to 0)::

    rows[i]            = c_i * grad[m]                 (jagged_mean_pool_backward_rows: [N, D], no atomics)
    dense[ids_i]      += c_i * grad[m]                 (jagged_mean_pool_backward: [num_rows, D], atomics)

One program per (bag, block of D columns): it walks the bag in chunks of ``BLOCK_E`` events, gathering
``BLOCK_E`` whole row segments per step (coalesced along D) and accumulating ``w * row`` in an fp32 tile
(fp64 for fp64 tables) that it reduces once at the end; the output row is written once. This reads every
row once and writes the pooled row once, where ``F.embedding_bag(mode="sum", per_sample_weights=w)`` plus
a division by a separately computed weight sum makes three passes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import jagged as _family
from . import _util

_OPS = ("jagged_mean_pool", "jagged_mean_pool_backward", "jagged_mean_pool_backward_rows")


def _config(d: int) -> tuple[int, int, int]:
    """(BLOCK_E, BLOCK_D, num_warps): whole rows up to D = 256 per program, about 4K elements per tile."""
    block_d = min(triton.next_power_of_2(max(d, 1)), 256)
    block_e = max(1, min(64, 4096 // block_d))
    return block_e, block_d, 4


@triton.jit
def _pool_kernel(
    table, ids, offsets, weights, out, D, stride_t, stride_o,
    HAS_W: tl.constexpr,  # weights given (else every event weighs 1)
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 tables
    BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    m = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    lo = tl.load(offsets + m)
    hi = tl.load(offsets + m + 1)
    acc = tl.zeros([BLOCK_E, BLOCK_D], ACC)
    den = tl.zeros([BLOCK_E], ACC)
    for start in range(lo, hi, BLOCK_E):
        e = start + tl.arange(0, BLOCK_E)
        e_ok = e < hi
        idx = tl.load(ids + e, mask=e_ok, other=0).to(tl.int64)
        if HAS_W:
            w = tl.load(weights + e, mask=e_ok, other=0).to(ACC)
        else:
            w = e_ok.to(ACC)
        rows = tl.load(table + idx[:, None] * stride_t + d[None, :], mask=e_ok[:, None] & d_ok[None, :], other=0)
        acc += rows.to(ACC) * w[:, None]
        den += w
    num = tl.sum(acc, axis=0)
    total = tl.sum(den, axis=0)
    res = tl.where(total > 0, num / total, 0.0)
    tl.store(out + m * stride_o + d, res.to(out.dtype.element_ty), mask=d_ok)


@triton.jit
def _backward_kernel(
    grad, ids, offsets, weights, out, D, stride_g, stride_o,
    HAS_W: tl.constexpr,
    DENSE: tl.constexpr,  # True: atomically add into out[ids_i] (dense table grad); False: store out[i]
    ACC: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    m = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    lo = tl.load(offsets + m)
    hi = tl.load(offsets + m + 1)
    if HAS_W:
        den = tl.zeros([BLOCK_E], ACC)
        for start in range(lo, hi, BLOCK_E):
            e = start + tl.arange(0, BLOCK_E)
            den += tl.load(weights + e, mask=e < hi, other=0).to(ACC)
        total = tl.sum(den, axis=0)
    else:
        total = (hi - lo).to(ACC)
    g = tl.load(grad + m * stride_g + d, mask=d_ok, other=0).to(ACC)
    g = tl.where(total > 0, g / total, 0.0)
    for start in range(lo, hi, BLOCK_E):
        e = start + tl.arange(0, BLOCK_E)
        e_ok = e < hi
        if HAS_W:
            w = tl.load(weights + e, mask=e_ok, other=0).to(ACC)
        else:
            w = e_ok.to(ACC)
        val = w[:, None] * g[None, :]
        mask = e_ok[:, None] & d_ok[None, :]
        if DENSE:
            idx = tl.load(ids + e, mask=e_ok, other=0).to(tl.int64)
            tl.atomic_add(out + idx[:, None] * stride_o + d[None, :], val.to(out.dtype.element_ty), mask=mask)
        else:
            tl.store(out + e.to(tl.int64)[:, None] * stride_o + d[None, :], val.to(out.dtype.element_ty), mask=mask)


def _check_data(op: str, ids: torch.Tensor, offsets: torch.Tensor, weights, num_rows: int | None) -> None:
    """The data checks of the compiled kernels (csrc/cpu/jagged_pool.cpp), in one device read."""
    if not _util.checks_enabled(ids.device):
        return
    n = ids.numel()
    # the messages are the compiled kernels'; their details are read only when a check fails
    decreasing = offsets.diff() < 0

    def decreasing_message():
        b = _util.first_true(decreasing)
        return f"offsets must be non-decreasing, but offsets[{b}] = {int(offsets[b])} > offsets[{b + 1}] = " \
               f"{int(offsets[b + 1])}"

    failures = [
        (offsets[0] != 0, lambda: f"offsets[0] must be 0, got {int(offsets[0])}"),
        (offsets[-1] != n, lambda: f"offsets[-1] must equal the number of ids ({n}), got {int(offsets[-1])}"),
        (decreasing.any(), decreasing_message),
    ]
    if num_rows is not None and n:
        out_of_range = (ids < 0) | (ids >= num_rows)

        def range_message():
            i = _util.first_true(out_of_range)
            return f"ids must be in [0, {num_rows}), got ids[{i}] = {int(ids[i])}"

        failures.append((out_of_range.any(), range_message))
    if weights is not None and n:
        bad_weight = ~torch.isfinite(weights) | (weights < 0)

        def weight_message():
            i = _util.first_true(bad_weight)
            return f"weights must be finite and non-negative, got weights[{i}] = {float(weights[i]):g}"

        failures.append((bad_weight.any(), weight_message))
    _util.raise_failed(op, failures)


def jagged_mean_pool(
    table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor | None = None,
    sparse: bool = False,
) -> torch.Tensor:
    op = "jagged_mean_pool"
    _family._check_jagged(op, ids, offsets, weights, table, "table")
    _util.check_device(op, table)
    _check_data(op, ids, offsets, weights, table.shape[0])
    if table.stride(1) != 1:
        table = table.contiguous()
    m, d = offsets.numel() - 1, table.shape[1]
    out = torch.empty(m, d, dtype=table.dtype, device=table.device)
    if m and d:
        block_e, block_d, num_warps = _config(d)
        _pool_kernel[(m, triton.cdiv(d, block_d))](
            table, ids.contiguous(), offsets.contiguous(), weights.contiguous() if weights is not None else ids,
            out, d, table.stride(0), out.stride(0),
            HAS_W=weights is not None, ACC=tl.float64 if table.dtype == torch.float64 else tl.float32,
            BLOCK_E=block_e, BLOCK_D=block_d, num_warps=num_warps,
        )
    return out


def _backward(op: str, grad, ids, offsets, weights, num_rows: int | None) -> torch.Tensor:
    _family._check_jagged_backward(op, grad, ids, offsets, weights, num_rows)
    _util.check_device(op, grad)
    _check_data(op, ids, offsets, weights, num_rows)
    dense = num_rows is not None
    grad = grad.contiguous()
    m, d = grad.shape
    acc = _util.acc_dtype(grad.dtype)
    if dense:
        # atomics accumulate in fp32/fp64: a bf16/fp16 buffer would round at every add
        out = torch.zeros(num_rows, d, dtype=acc, device=grad.device)
    else:
        out = torch.empty(ids.numel(), d, dtype=grad.dtype, device=grad.device)
    if m and d and ids.numel():
        block_e, block_d, num_warps = _config(d)
        _backward_kernel[(m, triton.cdiv(d, block_d))](
            grad, ids.contiguous(), offsets.contiguous(), weights.contiguous() if weights is not None else ids,
            out, d, grad.stride(0), out.stride(0),
            HAS_W=weights is not None, DENSE=dense, ACC=tl.float64 if acc == torch.float64 else tl.float32,
            BLOCK_E=block_e, BLOCK_D=block_d, num_warps=num_warps,
        )
    return out.to(grad.dtype)


def jagged_mean_pool_backward(
    grad: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor | None, num_rows: int
) -> torch.Tensor:
    return _backward("jagged_mean_pool_backward", grad, ids, offsets, weights, num_rows)


def jagged_mean_pool_backward_rows(
    grad: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    return _backward("jagged_mean_pool_backward_rows", grad, ids, offsets, weights, None)


# fakes and autograd are the family's (dv365_ops/jagged.py), shared with the native ops; its backward
# resolves the backward ops through ``_backend.resolve``, so backend "triton" runs the backward here too
for _name in _OPS:
    _util.define(_name, globals()[_name], getattr(_family, f"_fake_{_name}"))
torch.library.register_autograd(
    "dv365::jagged_mean_pool_triton", _family._backward_jagged_mean_pool,
    setup_context=_family._setup_context_jagged_mean_pool,
)
