"""Token-axis strided mean pooling between funnel blocks (paper 2.3.2; docs/design.md#ops-contract).

``token_pool(x, stride)`` maps ``x [..., N]`` to ``[..., ceil(N / stride)]``: each output is the mean of a
window of ``stride`` tokens along the last axis, the last window averaging what it has
(:func:`dv365_ops.reference.token_pool`). The FSA passes ``[B, N, D]`` activations as the transposed view
``[B, D, N]``; for such an input the output keeps that layout (a contiguous ``[B, n_out, D]`` buffer seen as
``[B, D, n_out]``), so neither the op nor the next block copies. Any other input gives a contiguous output.
"""

from __future__ import annotations

import torch

from . import _backend

__all__ = ["token_pool"]


def token_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Mean over windows of ``stride`` along the last axis: ``[..., N] -> [..., ceil(N / stride)]``."""
    _backend.check_tensor("token_pool", "x", x)
    return _backend.resolve("token_pool", x.device)(x, stride)


def _num_windows(n, stride: int):
    return (n + stride - 1) // stride


def _token_major(t: torch.Tensor) -> bool:
    # the layout rule of csrc/cpu/token_pool.cpp: the last two axes are a transposed contiguous buffer
    return t.dim() >= 2 and not t.is_contiguous() and t.transpose(-1, -2).is_contiguous()


def _empty_like_layout(like: torch.Tensor, last) -> torch.Tensor:
    sizes = [*like.shape[:-1], last]
    if _token_major(like):
        sizes[-1], sizes[-2] = sizes[-2], sizes[-1]
        return like.new_empty(sizes).transpose(-1, -2)
    return like.new_empty(sizes)


@torch.library.register_fake("dv365::token_pool")
def _fake_token_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    torch._check(stride >= 1, lambda: f"dv365::token_pool: stride must be >= 1, got {stride}")
    torch._check(x.dim() >= 1, lambda: "dv365::token_pool: x must have at least 1 dimension")
    return _empty_like_layout(x, _num_windows(x.shape[-1], stride))


@torch.library.register_fake("dv365::token_pool_backward")
def _fake_token_pool_backward(grad: torch.Tensor, stride: int, n) -> torch.Tensor:
    torch._check(stride >= 1, lambda: f"dv365::token_pool_backward: stride must be >= 1, got {stride}")
    torch._check(grad.dim() >= 1, lambda: "dv365::token_pool_backward: grad must have at least 1 dimension")
    return _empty_like_layout(grad, n)


def _setup_context_token_pool(ctx, inputs, output) -> None:
    x, stride = inputs
    ctx.stride = stride
    ctx.n = x.shape[-1]


def _backward_token_pool(ctx, grad: torch.Tensor):
    grad_x = _backend.resolve("token_pool_backward", grad.device)(grad, ctx.stride, ctx.n)
    return grad_x, None


torch.library.register_autograd(
    "dv365::token_pool", _backward_token_pool, setup_context=_setup_context_token_pool
)
