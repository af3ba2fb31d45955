"""The fused row-wise Adagrad update (:class:`~dv365.train.optim.RowWiseAdagrad` on CUDA). Each touched row is
updated whole in registers instead of by about ten torch kernels (gather the rows, square, mean, accumulate, sqrt,
reciprocal, scale, convert, scatter):

    g = grad[i] (+ weight_decay * w[r]);  G[r] += mean(g²);  w[r] += cast(g * (-lr / (√G[r] + eps)))

**Sparse gradients** (:func:`rowwise_adagrad_update_sparse`): every table of a step in one launch per (dtype,
width), with no device wait. The host cannot know without reading the device whether a gradient's rows are sorted
and unique (the pooling op's are, but autograd's accumulation drops their coalesced flag; ``nn.Embedding``'s
rows repeat), so it never asks: the rows of all the gradients are sorted together by one stable ``torch.sort``
(each distinct index tensor once, shifted past the ones before it so that they stay apart), and the kernel treats
every gradient as one with repeated rows: the first entry of each run of equal rows sums the run in order (as
``index_add_`` does after ``unique``) and updates the row. A coalesced gradient is a run of length one per row;
the sort moves a few bytes per gradient row, the update a whole row of values. The tables' addresses, sizes and
strides travel as an int64 ``[tables, fields]`` tensor (one small host-to-device copy from pinned memory) that each
program reads to find its table; a table's entries are split into blocks of ``BLOCK_R`` sorted entries.

**Dense gradients** (:func:`rowwise_adagrad_update`, also the per-table update of unique rows): one launch per table.

The arithmetic follows the torch update step by step in float32 (IEEE ``sqrt`` and division, no fused
multiply-adds, the update rounded to the table's dtype before it is added), so the two differ only in the order
``mean`` sums a row in (and, with repeated rows, in the dtype the run is summed in: float32 here, the gradient's
dtype in ``index_add_``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dv365_ops.slicing import storage_key

_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16,
              torch.float16: tl.float16}


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


# the sparse update's metadata: one int64 row of these fields per table
_FIELDS = ("weight", "state", "grad", "segment", "shift", "entries", "dim", "rows", "stride_w", "stride_g", "start")
_NF = tl.constexpr(len(_FIELDS))
_W, _ACC, _GRAD, _SEG, _SHIFT, _R, _D, _ROWS, _STRIDE_W, _STRIDE_G, _START = (
    tl.constexpr(i) for i in range(len(_FIELDS)))


@triton.jit(do_not_specialize=["T", "lr", "eps", "wd"])
def _sparse_rowwise_adagrad_kernel(
    meta,  # int64 [T, _NF]: per table its addresses, sizes, strides, and its first program
    keys,  # the sorted keys of all the gradients' rows: a row + the shift of its index tensor
    order,  # int64: each sorted key's position before the sort (its gradient row + its index tensor's segment)
    T, lr, eps, wd,
    W_TY: tl.constexpr,  # the tables' dtype
    G_TY: tl.constexpr,  # the gradients' dtype
    HAS_WD: tl.constexpr,
    F64: tl.constexpr,  # a float64 table adds its update in float64 (as torch's index_add_ does), others in float32
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    # this program's table: the last one whose first program is at or before it
    tt = tl.arange(0, BLOCK_T)
    starts = tl.load(meta + tt * _NF + _START, mask=tt < T, other=1 << 62)
    m = meta + (tl.sum((starts <= pid).to(tl.int32), axis=0) - 1) * _NF
    w = tl.load(m + _W).to(tl.pointer_type(W_TY))
    acc = tl.load(m + _ACC).to(tl.pointer_type(tl.float32))
    grad = tl.load(m + _GRAD).to(tl.pointer_type(G_TY))
    seg = tl.load(m + _SEG)
    shift = tl.load(m + _SHIFT)
    R = tl.load(m + _R)
    D = tl.load(m + _D)
    n_rows = tl.load(m + _ROWS)
    stride_w = tl.load(m + _STRIDE_W)
    stride_g = tl.load(m + _STRIDE_G)
    i = (pid - tl.load(m + _START)) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = i < R
    key = tl.load(keys + seg + i, mask=ok, other=-1)
    prev = tl.load(keys + seg + i - 1, mask=ok & (i > 0), other=-1)
    r = key.to(tl.int64) - shift
    # the first entry of a run of equal rows owns the row. Rows or positions out of range (an invalid sparse
    # tensor: torch does not check their indices by default) are skipped rather than read or written out of bounds.
    head = ok & ((i == 0) | (prev != key)) & (r >= 0) & (r < n_rows)
    src = tl.load(order + seg + i, mask=head, other=0) - seg
    head = head & (src >= 0) & (src < R)
    c = tl.arange(0, BLOCK_D)
    ok_c = (c < D)[None, :]
    g = tl.load(grad + src[:, None] * stride_g + c[None, :], mask=head[:, None] & ok_c, other=0.0).to(tl.float32)
    j = i + 1
    more = head & (j < R)
    more = more & (tl.load(keys + seg + j, mask=more, other=-1) == key)
    while tl.max(more.to(tl.int32), axis=0) > 0:  # the rest of the runs, in the gradient's order
        s = tl.load(order + seg + j, mask=more, other=0) - seg
        more = more & (s >= 0) & (s < R)
        x = tl.load(grad + s[:, None] * stride_g + c[None, :], mask=more[:, None] & ok_c, other=0.0)
        g = tl.where(more[:, None], g + x.to(tl.float32), g)
        j += 1
        more = more & (j < R)
        more = more & (tl.load(keys + seg + j, mask=more, other=-1) == key)
    mask = head[:, None] & ok_c
    w_ptr = w + r[:, None] * stride_w + c[None, :]
    wv = tl.load(w_ptr, mask=mask, other=0.0)
    if HAS_WD:
        g = g + wd * wv.to(tl.float32)
    mean = tl.math.div_rn(tl.sum(g * g, axis=1), D.to(tl.float32))
    state = tl.load(acc + r, mask=head, other=0.0) + mean
    tl.store(acc + r, state, mask=head)
    scale = tl.math.div_rn(1.0, tl.sqrt_rn(state) + eps) * -lr
    update = (g * scale[:, None]).to(W_TY)
    if F64:
        tl.store(w_ptr, wv + update, mask=mask)
    else:
        tl.store(w_ptr, (wv.to(tl.float32) + update.to(tl.float32)).to(W_TY), mask=mask)


def sparse_update_supported(weight: torch.Tensor, grad: torch.Tensor) -> bool:
    """Whether :func:`rowwise_adagrad_update_sparse` takes this table and gradient: a sparse COO gradient of
    ``[rows, D]`` values, float dtypes, a table with unit column strides and a contiguous state."""
    return (grad.is_sparse and grad.sparse_dim() == 1 and grad.dense_dim() == 1 and weight.dtype in _TL_DTYPES
            and grad.dtype in _TL_DTYPES and (weight.stride(1) == 1 or weight.shape[1] <= 1))


def rowwise_adagrad_update_sparse(
    updates: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float, float]],
) -> None:
    """Apply ``(weight [N, D], state float32 [N], grad, lr, eps, weight_decay)`` for every table, ``grad`` a sparse
    COO gradient (coalesced or not: repeated rows are summed) that :func:`sparse_update_supported` takes.

    Nothing here reads the device: the sizes come from the tensors' shapes, never their values. Tables that share
    an index tensor (the pooling op gives every table of one id column the same one) share its sort. One launch
    per (device, dtypes, padded width, hyperparameters): at W40K every pooled table is one launch. CUDA tensors,
    or CPU tensors under ``TRITON_INTERPRET=1``."""
    by_device: dict[torch.device, list] = {}
    for u in updates:
        weight, state, grad = u[0], u[1], u[2]
        if grad._nnz() == 0 or weight.shape[1] == 0:
            continue
        if not state.is_contiguous() or state.dtype != torch.float32:
            raise ValueError("rowwise_adagrad_update_sparse: the state must be a contiguous float32 vector, got "
                             f"{state.dtype} with strides {state.stride()}")
        by_device.setdefault(weight.device, []).append(u)
    for device, items in by_device.items():
        _update_sparse_on(device, items)


def _update_sparse_on(device: torch.device, items: list) -> None:
    # one segment of the sort per distinct index tensor, its keys shifted past the rows of the segments before it
    segment_of: dict[tuple, int] = {}
    segments: list[list] = []  # [indices [1, nnz], first position, shift, rows spanned]
    seg_of_item = []
    for weight, _, grad, *_ in items:
        ind = grad._indices()
        key = storage_key(ind[0])
        if key not in segment_of:
            segment_of[key] = len(segments)
            segments.append([ind, 0, 0, 0])
        seg = segments[segment_of[key]]
        seg[3] = max(seg[3], weight.shape[0])
        seg_of_item.append(seg)
    pos = shift = 0
    for seg in segments:
        seg[1], seg[2] = pos, shift
        pos += seg[0].shape[1]
        shift += seg[3]
    # int32 keys when they fit: the radix sort then makes half the passes
    keys = torch.empty(pos, dtype=torch.int32 if shift < 2**31 else torch.int64, device=device)
    for ind, start, seg_shift, _ in segments:
        torch.add(ind[0], seg_shift, out=keys[start:start + ind.shape[1]])
    keys, order = torch.sort(keys, stable=True)

    groups: dict[tuple, list] = {}
    contiguous = []  # gradient values copied to unit column strides, alive until their launch is queued
    for (weight, state, grad, lr, eps, wd), seg in zip(items, seg_of_item):
        values = grad._values()
        d = weight.shape[1]
        if values.stride(1) != 1 and d > 1:
            values = values.contiguous()
            contiguous.append(values)
        key = (weight.dtype, values.dtype, triton.next_power_of_2(d), float(lr), float(eps), float(wd))
        groups.setdefault(key, []).append([weight.data_ptr(), state.data_ptr(), values.data_ptr(), seg[1], seg[2],
                                           values.shape[0], d, weight.shape[0], weight.stride(0), values.stride(0)])
    # all the groups' metadata in one tensor: one copy to the device
    rows, launches = [], []
    for (w_dtype, g_dtype, block_d, lr, eps, wd), tables in groups.items():
        block_r = max(1, min(16, 4096 // block_d))
        first, programs = len(rows), 0
        for t in tables:
            rows.append(t + [programs])
            programs += triton.cdiv(t[5], block_r)
        launches.append((first, len(tables), programs, w_dtype, g_dtype, block_d, block_r, lr, eps, wd))
    meta = _to_device(rows, device)
    for first, n, programs, w_dtype, g_dtype, block_d, block_r, lr, eps, wd in launches:
        _sparse_rowwise_adagrad_kernel[(programs,)](
            meta[first:first + n], keys, order, n, lr, eps, wd, W_TY=_TL_DTYPES[w_dtype], G_TY=_TL_DTYPES[g_dtype],
            HAS_WD=bool(wd), F64=w_dtype == torch.float64, BLOCK_T=triton.next_power_of_2(n), BLOCK_R=block_r,
            BLOCK_D=block_d, enable_fp_fusion=False,
        )


def _to_device(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """The metadata as an int64 tensor on ``device``: from pinned memory without a wait on CUDA (the caching host
    allocator keeps the pinned block until the copy has run)."""
    if device.type != "cuda":
        return torch.tensor(rows, dtype=torch.int64, device=device)
    return torch.tensor(rows, dtype=torch.int64, pin_memory=True).to(device, non_blocking=True)
