"""Token-axis strided mean pooling between funnel blocks (paper 2.3.2; docs/design.md#ops-contract).

``token_pool(x, stride)`` maps ``x [..., N]`` to ``[..., ceil(N / stride)]``: each output is the mean of a
window of ``stride`` tokens along the last axis, the last window averaging what it has
(:func:`dv365_ops.reference.token_pool`). The FSA passes ``[B, N, D]`` activations as the transposed view
``[B, D, N]``; for such an input the output keeps that layout (a contiguous ``[B, n_out, D]`` buffer seen as
``[B, D, n_out]``), so neither the op nor the next block copies. Any other input gives a contiguous output.
"""

from __future__ import annotations

import torch

from . import _backend, _checks

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


def _check_float(op: str, name: str, x: torch.Tensor) -> None:
    _checks.check(op, x.dtype in _checks.FLOAT_TYPES,
                  lambda: f"{name} must be float32, float64, bfloat16 or float16, got {_checks.dtype_name(x.dtype)}")


def _check_token_pool(x: torch.Tensor, stride: int) -> None:
    """The compiled kernels' checks (csrc/cpu/token_pool.cpp), with their messages."""
    op = "token_pool"
    _checks.check(op, stride >= 1, lambda: f"stride must be >= 1, got {stride}")
    _checks.check(op, x.dim() >= 1,
                  lambda: "x must have at least 1 dimension (tokens on the last axis), got a 0-d tensor")
    _check_float(op, "x", x)


def _check_token_pool_backward(grad: torch.Tensor, stride: int, n) -> None:
    op = "token_pool_backward"
    _checks.check(op, stride >= 1, lambda: f"stride must be >= 1, got {stride}")
    _checks.check(op, n >= 0, lambda: f"n must be >= 0, got {n}")
    _checks.check(op, grad.dim() >= 1, lambda: "grad must have at least 1 dimension, got a 0-d tensor")
    _check_float(op, "grad", grad)
    n_out = _num_windows(n, stride)
    _checks.check(op, grad.shape[-1] == n_out,
                  lambda: f"grad must have ceil(n / stride) = {n_out} entries on its last axis, got {grad.shape[-1]}")


@torch.library.register_fake("dv365::token_pool")
def _fake_token_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    _check_token_pool(x, stride)
    return _empty_like_layout(x, _num_windows(x.shape[-1], stride))


@torch.library.register_fake("dv365::token_pool_backward")
def _fake_token_pool_backward(grad: torch.Tensor, stride: int, n) -> torch.Tensor:
    _check_token_pool_backward(grad, stride, n)
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
