"""The fused row-wise Adagrad update (:class:`~dv365.train.optim.RowWiseAdagrad` on CUDA): one Triton launch per
table instead of about ten torch kernels (gather the rows, square, mean, accumulate, sqrt, reciprocal, scale,
convert, scatter). Each program updates ``BLOCK_R`` touched rows, each row whole in registers:

    g = grad[i] (+ weight_decay * w[r]);  G[r] += mean(g²);  w[r] += cast(g * (-lr / (√G[r] + eps)))

with ``r = rows[i]`` (the rows are unique: no two programs write one row). A gradient with repeated rows
(``nn.Embedding``'s: one row per lookup) is sorted by row instead of made unique (``unique`` waits for the
device), and one program per row sums its run of rows in order, then updates it. The arithmetic follows the torch
update step by step in float32 (IEEE ``sqrt`` and division, no fused multiply-adds, the update rounded to the
table's dtype before it is added), so the two differ only in the order ``mean`` sums a row in."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["R", "dim", "lr", "eps", "wd"])
def _rowwise_adagrad_kernel(
    w, acc, grad, rows, R, D, stride_w, stride_g, dim, lr, eps, wd,  # dim: D as a float (the mean's divisor)
    HAS_ROWS: tl.constexpr,  # False: a dense gradient, row i of the table is row i of grad
    HAS_WD: tl.constexpr,
    F64: tl.constexpr,  # a float64 table adds its update in float64 (as torch's index_add_ does), others in float32
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok_r = i < R
    if HAS_ROWS:
        r = tl.load(rows + i, mask=ok_r, other=0)
    else:
        r = i
    c = tl.arange(0, BLOCK_D)
    ok = ok_r[:, None] & (c < D)[None, :]
    g = tl.load(grad + i[:, None] * stride_g + c[None, :], mask=ok, other=0.0).to(tl.float32)
    w_ptr = w + r[:, None] * stride_w + c[None, :]
    wv = tl.load(w_ptr, mask=ok, other=0.0)
    if HAS_WD:
        g = g + wd * wv.to(tl.float32)
    mean = tl.math.div_rn(tl.sum(g * g, axis=1), dim)
    state = tl.load(acc + r, mask=ok_r, other=0.0) + mean
    tl.store(acc + r, state, mask=ok_r)
    scale = tl.math.div_rn(1.0, tl.sqrt_rn(state) + eps) * -lr
    update = (g * scale[:, None]).to(wv.dtype)
    if F64:
        tl.store(w_ptr, wv + update, mask=ok)
    else:
        tl.store(w_ptr, (wv.to(tl.float32) + update.to(tl.float32)).to(wv.dtype), mask=ok)


@triton.jit(do_not_specialize=["R", "dim", "lr", "eps", "wd"])
def _rowwise_adagrad_runs_kernel(
    w, acc, grad, rows, R, D, stride_w, stride_g, dim, lr, eps, wd,  # rows sorted, repeated rows adjacent
    HAS_WD: tl.constexpr,
    F64: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    r = tl.load(rows + i)
    prev = tl.load(rows + tl.maximum(i - 1, 0))
    if (i == 0) | (prev != r):  # the first of its run: it owns the row
        c = tl.arange(0, BLOCK_D)
        ok = c < D
        g = tl.load(grad + i * stride_g + c, mask=ok, other=0.0).to(tl.float32)
        j = i + 1
        nxt = tl.load(rows + tl.minimum(j, R - 1))
        while (j < R) & (nxt == r):  # the run's other rows, in order (as index_add_ sums them)
            g += tl.load(grad + j * stride_g + c, mask=ok, other=0.0).to(tl.float32)
            j += 1
            nxt = tl.load(rows + tl.minimum(j, R - 1))
        w_ptr = w + r * stride_w + c
        wv = tl.load(w_ptr, mask=ok, other=0.0)
        if HAS_WD:
            g = g + wd * wv.to(tl.float32)
        state = tl.load(acc + r) + tl.math.div_rn(tl.sum(g * g, axis=0), dim)
        tl.store(acc + r, state)
        scale = tl.math.div_rn(1.0, tl.sqrt_rn(state) + eps) * -lr
        update = (g * scale).to(wv.dtype)
        if F64:
            tl.store(w_ptr, wv + update, mask=ok)
        else:
            tl.store(w_ptr, (wv.to(tl.float32) + update.to(tl.float32)).to(wv.dtype), mask=ok)


def rowwise_adagrad_update_repeated(weight: torch.Tensor, state: torch.Tensor, rows: torch.Tensor,
                                    grad: torch.Tensor, lr: float, eps: float, weight_decay: float) -> None:
    """:func:`rowwise_adagrad_update` for ``rows`` that may repeat and come in any order (an uncoalesced sparse
    gradient): a row's gradient is the sum of its rows, as after ``coalesce``. One stable sort, no device wait."""
    n, d = weight.shape
    if rows.numel() == 0 or d == 0:
        return
    if weight.stride(1) != 1 or not state.is_contiguous():
        raise ValueError("rowwise_adagrad_update: the table needs unit column strides and the state must be a "
                         f"contiguous vector, got strides {weight.stride()} and {state.stride()}")
    rows, order = torch.sort(rows, stable=True)
    grad = grad.index_select(0, order)
    _rowwise_adagrad_runs_kernel[(rows.numel(),)](
        weight, state, grad, rows, rows.numel(), d, weight.stride(0), grad.stride(0), float(d), float(lr),
        float(eps), float(weight_decay), HAS_WD=bool(weight_decay), F64=weight.dtype == torch.float64,
        BLOCK_D=triton.next_power_of_2(d), enable_fp_fusion=False,
    )


def rowwise_adagrad_update(weight: torch.Tensor, state: torch.Tensor, rows: torch.Tensor | None, grad: torch.Tensor,
                           lr: float, eps: float, weight_decay: float) -> None:
    """Update ``weight [N, D]`` and ``state`` float32 ``[N]`` in place from ``grad [U, D]`` of the unique ``rows``
    int64 ``[U]`` (None: a dense ``[N, D]`` gradient). CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``."""
    n, d = weight.shape
    u = grad.shape[0] if rows is not None else n
    if u == 0 or d == 0:
        return
    if weight.stride(1) != 1 or not state.is_contiguous():
        raise ValueError("rowwise_adagrad_update: the table needs unit column strides and the state must be a "
                         f"contiguous vector, got strides {weight.stride()} and {state.stride()}")
    if grad.stride(1) != 1:
        grad = grad.contiguous()
    block_d = triton.next_power_of_2(d)
    block_r = max(1, min(16, 4096 // block_d))
    rows_arg = rows.contiguous() if rows is not None else grad  # an unused pointer when HAS_ROWS is False
    _rowwise_adagrad_kernel[(triton.cdiv(u, block_r),)](
        weight, state, grad, rows_arg, u, d, weight.stride(0), grad.stride(0), float(d), float(lr), float(eps),
        float(weight_decay), HAS_ROWS=rows is not None, HAS_WD=bool(weight_decay),
        F64=weight.dtype == torch.float64, BLOCK_R=block_r, BLOCK_D=block_d, enable_fp_fusion=False,
    )
