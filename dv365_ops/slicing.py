"""Multi-slicing (paper eq. 2-6, docs/design.md#slices): ``slice_timeline`` and the fused ``sliced_pool``.

A slice program (layout in :mod:`dv365_ops.program`) declares ~200 slices of a timeline; the reference
semantics live in :mod:`dv365_ops.reference` (``slice_membership``, ``slice_timeline``, ``sliced_pool``).

- :func:`slice_timeline` emits every slice's ids and weights in KeyedJaggedTensor order, for TorchRec.
- :func:`sliced_pool` slices and pools in one pass without materializing the slices: each event's row is
  read once per table. It is differentiable in the tables (dense gradients, or uncoalesced sparse COO
  gradients with ``sparse=True``); ``weight_sum`` is not differentiable.
"""

from __future__ import annotations

import torch

from . import _backend


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
    """Evaluate the slice program on every event and emit ``(values int64 [L], weights float32 [L],
    lengths int64 [S * B])`` in KeyedJaggedTensor order: slice-major, then user, then timeline order, with
    ``lengths[s * B + b]`` the size of slice ``s`` for user ``b``; slice ``s`` emits ``ids[prog_i[s, TABLE]]``."""
    _check_timeline("slice_timeline", None, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f)
    op = _backend.resolve("slice_timeline", ts.device)
    return op(list(ids), offsets, ts, cats, floats, request_ts, prog_i, prog_f)


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
    *,
    sparse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slice then pool (paper eq. 2-6): ``pooled [B, S, D]`` (the tables' dtype) is, per user ``b`` and
    slice ``s``, the weighted mean of ``tables[t][ids[t][e]]`` (``t = prog_i[s, TABLE]``) over the events
    ``e`` that ``s`` keeps (zeros for an empty slice); ``weight_sum float32 [B, S]`` is the sum of the
    weights. ``sparse=True`` makes the tables' gradients sparse COO tensors."""
    _check_timeline("sliced_pool", tables, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f)
    op = _backend.resolve("sliced_pool", ts.device)
    return op(list(tables), list(ids), offsets, ts, cats, floats, request_ts, prog_i, prog_f, sparse)


def _check_timeline(op, tables, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f) -> None:
    if tables is not None:
        _backend.check_tensor_list(op, "tables", tables)
    _backend.check_tensor_list(op, "ids", ids, index=True)
    for name, x, index in (("offsets", offsets, True), ("ts", ts, True), ("cats", cats, False),
                           ("floats", floats, False), ("request_ts", request_ts, True), ("prog_i", prog_i, False),
                           ("prog_f", prog_f, False)):
        _backend.check_tensor(op, name, x, index)


@torch.library.register_fake("dv365::slice_timeline")
def _fake_slice_timeline(ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f):
    total = torch.library.get_ctx().new_dynamic_size()
    lengths = ts.new_empty((prog_i.shape[0] * (offsets.shape[0] - 1),), dtype=torch.int64)
    return ts.new_empty((total,), dtype=torch.int64), ts.new_empty((total,), dtype=torch.float32), lengths


@torch.library.register_fake("dv365::sliced_pool")
def _fake_sliced_pool(tables, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, sparse=False):
    torch._check(len(tables) >= 1, lambda: "dv365::sliced_pool: tables must hold at least one table")
    b, s, d = offsets.shape[0] - 1, prog_i.shape[0], tables[0].shape[1]
    return tables[0].new_empty((b, s, d)), tables[0].new_empty((b, s), dtype=torch.float32)


@torch.library.register_fake("dv365::sliced_pool_backward")
def _fake_sliced_pool_backward(grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, num_rows):
    return [grad.new_empty((r, grad.shape[2])) for r in num_rows]


@torch.library.register_fake("dv365::sliced_pool_backward_rows")
def _fake_sliced_pool_backward_rows(grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f):
    return [grad.new_empty((t.shape[0], grad.shape[2])) for t in ids]


def _setup_context_sliced_pool(ctx, inputs, output):
    tables, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, sparse = inputs
    ctx.save_for_backward(*ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, output[1])
    ctx.num_tables = len(tables)
    ctx.num_rows = [t.shape[0] for t in tables]
    ctx.sparse = sparse
    ctx.mark_non_differentiable(output[1])


def _backward_sliced_pool(ctx, grad_pooled, grad_weight_sum):
    saved = ctx.saved_tensors
    ids = list(saved[: ctx.num_tables])
    offsets, ts, cats, floats, request_ts, prog_i, prog_f, weight_sum = saved[ctx.num_tables :]
    grad = grad_pooled.contiguous()
    if ctx.sparse:
        op = _backend.resolve("sliced_pool_backward_rows", grad.device)
        rows = op(grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f)
        grads = [
            torch.sparse_coo_tensor(i[None], r, (n, grad.shape[2]), check_invariants=False)
            for i, r, n in zip(ids, rows, ctx.num_rows)
        ]
    else:
        op = _backend.resolve("sliced_pool_backward", grad.device)
        grads = list(op(grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, ctx.num_rows))
    # one entry per argument the op was called with: the dispatcher drops ``sparse`` when it is the default
    return (grads, [None] * len(ids)) + (None,) * (8 if ctx.sparse else 7)


torch.library.register_autograd(
    "dv365::sliced_pool", _backward_sliced_pool, setup_context=_setup_context_sliced_pool
)

__all__ = ["slice_timeline", "sliced_pool"]
