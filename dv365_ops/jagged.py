"""Jagged weighted mean pooling: ``out[m] = Σ_i w_i · table[ids_i] / Σ_i w_i`` over each bag (docs/design.md#ops-contract).

This is the pooling of the paper's §2 slices (each slice of a user's history pools to one embedding); the
semantics are :func:`dv365_ops.reference.jagged_mean_pool`. The ops are ``dv365::jagged_mean_pool`` and its
two backward ops (dense table gradient, or per-event rows for a sparse COO gradient like
``nn.EmbeddingBag(sparse=True)``); this module adds their fake impls and autograd.
"""

from __future__ import annotations

import torch

from . import _backend, _checks

__all__ = ["jagged_mean_pool"]

def jagged_mean_pool(
    table: torch.Tensor,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    sparse: bool = False,
) -> torch.Tensor:
    """Weighted mean of ``table`` rows per bag.

    Args:
        table: ``[R, D]`` float32, bfloat16, float16 or float64.
        ids: ``[N]`` int64 row ids, in ``[0, R)``.
        offsets: ``[M + 1]`` int64, bag ``m`` is ``ids[offsets[m]:offsets[m + 1]]``.
        weights: optional ``[N]`` non-negative finite per-event weights (any float dtype; the op
            accumulates in float32, float64 for a float64 table).
        sparse: give ``table`` a sparse COO gradient (one row per event, uncoalesced) instead of a
            dense ``[R, D]`` one.

    Returns:
        ``[M, D]`` in the table's dtype; an empty bag, or one whose weights sum to 0, pools to zeros.
    """
    _backend.check_tensor("jagged_mean_pool", "table", table)
    _backend.check_tensor("jagged_mean_pool", "ids", ids, index=True)
    _backend.check_tensor("jagged_mean_pool", "offsets", offsets, index=True)
    if weights is not None:
        _backend.check_tensor("jagged_mean_pool", "weights", weights)
    return _backend.resolve("jagged_mean_pool", table.device)(table, ids, offsets, weights, sparse)


def _check_jagged(op: str, ids, offsets, weights, dense, dense_name: str) -> None:
    """The metadata checks of the compiled kernels (csrc/cpu/jagged_pool.cpp), with the same messages; the fakes
    and the Triton wrappers call it."""
    c = _checks.check
    c(op, dense.dim() == 2, lambda: f"{dense_name} must be 2-D [rows, D], got {dense.dim()}-D")
    c(op, dense.dtype in _checks.FLOAT_TYPES,
      lambda: f"{dense_name} must be float32, bfloat16, float16 or float64, got {_checks.dtype_name(dense.dtype)}")
    c(op, ids.dim() == 1, lambda: f"ids must be 1-D, got {ids.dim()}-D")
    c(op, ids.dtype == torch.int64, lambda: f"ids must be int64, got {_checks.dtype_name(ids.dtype)}")
    c(op, offsets.dim() == 1, lambda: f"offsets must be 1-D, got {offsets.dim()}-D")
    c(op, offsets.dtype == torch.int64, lambda: f"offsets must be int64, got {_checks.dtype_name(offsets.dtype)}")
    c(op, offsets.shape[0] >= 1, lambda: "offsets must have at least one element (offsets[0] == 0)")
    _checks.check_same_device(op, "ids", ids, dense, dense_name)
    _checks.check_same_device(op, "offsets", offsets, dense, dense_name)
    if weights is not None:
        c(op, weights.dim() == 1 and weights.shape[0] == ids.shape[0],
          lambda: f"weights must have shape [N] = [{ids.shape[0]}] like ids, got {_checks.sizes(weights)}")
        c(op, weights.dtype in _checks.FLOAT_TYPES,
          lambda: f"weights must be float32, float64, bfloat16 or float16, got {_checks.dtype_name(weights.dtype)}")
        _checks.check_same_device(op, "weights", weights, dense, dense_name)


@torch.library.register_fake("dv365::jagged_mean_pool")
def _fake_jagged_mean_pool(table, ids, offsets, weights=None, sparse=False):
    _check_jagged("jagged_mean_pool", ids, offsets, weights, table, "table")
    return table.new_empty(offsets.shape[0] - 1, table.shape[1])


def _check_jagged_backward(op: str, grad, ids, offsets, weights, num_rows=None) -> None:
    """The backward ops' metadata checks (``num_rows`` is None for the per-event rows op)."""
    _check_jagged(op, ids, offsets, weights, grad, "grad")
    if num_rows is not None:
        _checks.check(op, num_rows >= 0, lambda: f"num_rows must be non-negative, got {num_rows}")
    _checks.check(op, grad.shape[0] == offsets.shape[0] - 1,
                  lambda: f"grad must have one row per bag ({offsets.shape[0] - 1}), got {grad.shape[0]}")


@torch.library.register_fake("dv365::jagged_mean_pool_backward")
def _fake_jagged_mean_pool_backward(grad, ids, offsets, weights, num_rows):
    _check_jagged_backward("jagged_mean_pool_backward", grad, ids, offsets, weights, num_rows)
    return grad.new_empty(num_rows, grad.shape[1])


@torch.library.register_fake("dv365::jagged_mean_pool_backward_rows")
def _fake_jagged_mean_pool_backward_rows(grad, ids, offsets, weights):
    _check_jagged_backward("jagged_mean_pool_backward_rows", grad, ids, offsets, weights)
    return grad.new_empty(ids.shape[0], grad.shape[1])


def _setup_context_jagged_mean_pool(ctx, inputs, output):
    table, ids, offsets, weights, sparse = inputs
    ctx.sparse = sparse
    ctx.num_rows = table.shape[0]
    weights_grad = weights is not None and weights.requires_grad
    # the table is only needed for the weights' gradient
    ctx.save_for_backward(ids, offsets, weights, table if weights_grad else None)


def _weights_grad(grad, table, ids, offsets, weights):
    """The weights' gradient of ``out_m = num_m / den_m`` (``num_m = Σ w_i e_i``, ``den_m = Σ w_i``; 0 for a
    zero-sum bag) by the chain rule, in the accumulation dtype and in the order autograd takes through the
    reference: ``grad_w_i = grad_m · e_i / den_m - grad_m · (num_m / den_m) / den_m``. The op's output is not
    used: it is rounded to the table's dtype, and for 16-bit tables ``e_i - out_m`` over a small weight sum
    amplified that rounding past the tolerance."""
    acc = torch.float64 if table.dtype == torch.float64 else torch.float32
    m = offsets.shape[0] - 1
    bag = torch.repeat_interleave(torch.arange(m, device=ids.device), offsets.diff(), output_size=ids.shape[0])
    w = weights.to(acc)
    rows = table.index_select(0, ids).to(acc)
    num = torch.zeros(m, rows.shape[1], dtype=acc, device=rows.device).index_add_(0, bag, rows * w[:, None])
    den = torch.zeros(m, dtype=acc, device=w.device).index_add_(0, bag, w)
    den_c = den.clamp_min(torch.finfo(acc).tiny)[:, None]
    g = torch.where(den[:, None] > 0, grad.to(acc), 0.0)
    grad_num = g / den_c
    grad_den = (-g * ((num / den_c) / den_c)).sum(1)
    return ((grad_num.index_select(0, bag) * rows).sum(1) + grad_den.index_select(0, bag)).to(weights.dtype)


def _backward_jagged_mean_pool(ctx, grad):
    ids, offsets, weights, table = ctx.saved_tensors
    grad_table = grad_weights = None
    if ctx.needs_input_grad[0]:
        if ctx.sparse:
            rows = _backend.resolve("jagged_mean_pool_backward_rows", grad.device)(grad, ids, offsets, weights)
            # ids were checked against the table by the forward
            grad_table = torch.sparse_coo_tensor(
                ids[None], rows, (ctx.num_rows, grad.shape[1]), check_invariants=False
            )
        else:
            grad_table = _backend.resolve("jagged_mean_pool_backward", grad.device)(
                grad, ids, offsets, weights, ctx.num_rows
            )
    if weights is not None and ctx.needs_input_grad[3]:
        grad_weights = _weights_grad(grad, table, ids, offsets, weights)
    return grad_table, None, None, grad_weights, None


torch.library.register_autograd(
    "dv365::jagged_mean_pool", _backward_jagged_mean_pool, setup_context=_setup_context_jagged_mean_pool
)
