"""Row-wise Adagrad for embedding tables (as fbgemm's ``EXACT_ROWWISE_ADAGRAD``): one accumulator per row.

torch's sparse Adagrad coalesces each sparse gradient with a sort, keeps a full ``[rows, dim]`` state and masks
it with more sorts, which made it most of a training step at W40K size (docs/training.md). Here a gradient that is
already coalesced (the fused pooling op's: one row per touched table row) is used as it is, an uncoalesced one
(``nn.Embedding``'s: one row per lookup) has its duplicates summed once (``unique`` + ``index_add_``), the state is
one float per row (the mean of the squared gradient over the row, so D× less memory), and only the touched rows
are read and written:

    G_r += mean_d(g_rd²);   w_r -= lr · g_r / (√G_r + eps)

Dense gradients are accepted too (every row is then "touched"). On CUDA (with Triton) the update is fused
(:mod:`dv365.train._adagrad_triton`, the same float32 steps; ``fused=False`` keeps the torch ops): all the sparse
tables of a step in one kernel launch per dtype and width, without reading anything back from the device (a
coalesced gradient or one with repeated rows alike), and a dense gradient in one launch per table. On the CPU it
is the torch ops, which resume bitwise.
"""

from __future__ import annotations

import torch

import dv365_ops
from dv365_ops.slicing import storage_key


class RowWiseAdagrad(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.05, eps: float = 1e-10, weight_decay: float = 0.0,
                 fused: bool | None = None) -> None:
        if not lr > 0:
            raise ValueError(f"RowWiseAdagrad: lr must be > 0, got {lr}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"RowWiseAdagrad: eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        super().__init__(params, {"lr": lr, "eps": eps, "weight_decay": weight_decay})
        # None: the Triton kernel for CUDA tables when Triton is installed
        self.fused = fused
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"RowWiseAdagrad: parameters must be 2-D tables, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        fused_sparse, per_table = [], []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if self._fused(p) and p.grad.is_sparse:
                    from ._adagrad_triton import sparse_update_supported

                    if sparse_update_supported(p, p.grad):
                        fused_sparse.append((p, self._state_sum(p), p.grad, group["lr"], group["eps"],
                                             group["weight_decay"]))
                        continue
                per_table.append((group, p))
        if fused_sparse:
            # every sparse table in one launch per dtype and width, and no device wait: the kernel sums repeated
            # rows itself, so it never needs to know whether a gradient is coalesced (_adagrad_triton says how)
            from ._adagrad_triton import rowwise_adagrad_update_sparse

            rowwise_adagrad_update_sparse(fused_sparse)
        # tables that pool the same id column get gradients on the same index tensor (15 tables, 6 columns in
        # the default spec): its unique rows are found once per step
        uniques: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        _flag_sorted_unique_grads([p for _, p in per_table])
        for group, p in per_table:
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            if self._fused(p) and not p.grad.is_sparse:
                from ._adagrad_triton import rowwise_adagrad_update

                rowwise_adagrad_update(p, self._state_sum(p), None, p.grad, lr, eps, wd)
                continue
            rows, grad = _rows_and_sums(p.grad, uniques)
            if rows is not None and rows.numel() == 0:
                continue
            acc = self._state_sum(p)
            w = p if rows is None else p.index_select(0, rows)
            g = grad.float()
            if wd:
                g = g + wd * w.float()
            if rows is None:
                acc.add_(g.square().mean(1))
                scale = acc.sqrt().add_(eps).reciprocal_().mul_(-lr)
                p.add_((g * scale[:, None]).to(p.dtype))
            else:
                acc.index_add_(0, rows, g.square().mean(1))
                scale = acc.index_select(0, rows).sqrt_().add_(eps).reciprocal_().mul_(-lr)
                # rows are unique, so index_add_ is a scatter of the updated rows
                p.index_add_(0, rows, (g * scale[:, None]).to(p.dtype))
        return loss

    def _state_sum(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "sum" not in state:
            state["sum"] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
        return state["sum"]

    def _fused(self, p: torch.Tensor) -> bool:
        """fused=None: the kernel for CUDA tables when Triton is installed. fused=True: always (a CPU table then
        needs TRITON_INTERPRET=1, which the tests use to check the kernel against the torch ops)."""
        if self.fused is False or (self.fused is None and p.device.type != "cuda"):
            return False
        if dv365_ops.triton is None:
            if self.fused:
                raise RuntimeError("RowWiseAdagrad(fused=True): the fused update needs Triton (pip install triton)")
            return False
        return True


def _flag_sorted_unique_grads(params: list[torch.Tensor]) -> None:
    """Mark as coalesced the sparse gradients whose row indices are already strictly increasing.

    ``sliced_pool(sparse=True)`` returns coalesced gradients (its touched rows, summed), but autograd's gradient
    accumulation rebuilds a sparse gradient without the flag, and summing the rows again would cost a ``unique``
    and a pass over ``[rows, D]`` per table. The check is one comparison over the indices, and all tables' results
    are read back together (a single device sync on CUDA)."""
    grads = [p.grad for p in params if p.grad is not None and p.grad.is_sparse and not p.grad.is_coalesced()
             and p.grad.sparse_dim() == 1]
    if not grads:
        return
    checks = []
    for g in grads:
        idx = g._indices()[0]
        checks.append((idx[1:] > idx[:-1]).all() if idx.numel() > 1 else torch.ones((), dtype=torch.bool,
                                                                                     device=idx.device))
    for g, ok in zip(grads, torch.stack(checks).tolist()):
        if ok:
            g._coalesced_(True)


def _rows_and_sums(grad: torch.Tensor, uniques: dict) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(unique rows, their summed gradient) of a sparse COO gradient; (None, grad) for a dense one. ``uniques``
    memoises ``unique(indices)`` by the index tensor's storage, within one step."""
    if not grad.is_sparse:
        return None, grad
    if grad.is_coalesced():
        return grad.indices()[0], grad.values()
    idx, values = grad._indices()[0], grad._values()
    key = storage_key(idx)
    if key not in uniques:
        uniques[key] = torch.unique(idx, return_inverse=True)
    rows, inverse = uniques[key]
    sums = torch.zeros((rows.numel(), *values.shape[1:]), dtype=values.dtype, device=values.device)
    sums.index_add_(0, inverse, values)
    return rows, sums
