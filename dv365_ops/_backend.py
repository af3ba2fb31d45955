"""Which implementation serves an op on a device: the compiled kernels (C++ on the CPU, CUDA) or Triton.

Choose with ``DV365_BACKEND=auto|native|triton`` in the environment, ``dv365_ops.set_backend(...)``, or
the ``dv365_ops.use_backend(...)`` context manager (thread-local). ``auto`` takes the compiled kernel
when the build has one for the device, Triton for the ops listed in ``AUTO_TRITON`` (where the H200
benchmarks in ``benchmarks/results/`` measured Triton faster), and Triton where no compiled kernel exists.
"""

from __future__ import annotations

import contextlib
import os
import threading

import torch

BACKENDS = ("auto", "native", "triton")

# ops whose Triton kernel beat the CUDA kernel on the H200 (see benchmarks/results/)
AUTO_TRITON: set[str] = set()

# the ops that have a Triton kernel (dv365_ops/triton_kernels/); the others have none and every backend runs
# their compiled kernel
TRITON_OPS = frozenset({
    "int4_dequantize", "int4_quantize", "jagged_mean_pool", "jagged_mean_pool_backward",
    "jagged_mean_pool_backward_rows", "sliced_pool", "sliced_pool_backward", "sliced_pool_backward_rows",
})

_state = threading.local()


class InputError(TypeError, RuntimeError):
    """A Python-API argument of the wrong kind (a list where a tensor goes, int32 ids). A ``TypeError`` that is
    also the ``RuntimeError`` the compiled kernels raise for the same inputs, so either ``except`` catches it."""


def check_tensor(op: str, name: str, x, index: bool = False) -> None:
    """``x`` must be a tensor; an ``index`` argument (ids, offsets, timestamps) must be int64."""
    if not isinstance(x, torch.Tensor):
        hint = " (wrap it with torch.tensor(...))" if isinstance(x, (list, tuple, int, float)) else ""
        raise InputError(f"dv365::{op}: {name} must be a torch.Tensor, got {type(x).__name__}{hint}")
    if index and x.dtype != torch.int64 and not x.dtype.is_floating_point and x.dtype != torch.bool:
        raise InputError(f"dv365::{op}: {name} must be int64, got {x.dtype} (cast with {name.split('[')[0]}.long())")


def check_tensor_list(op: str, name: str, xs, index: bool = False) -> None:
    """``xs`` must be a list or tuple of tensors (one per table)."""
    if isinstance(xs, torch.Tensor) or not isinstance(xs, (list, tuple)):
        raise InputError(f"dv365::{op}: {name} must be a list of tensors (one per table), got {type(xs).__name__}")
    for i, x in enumerate(xs):
        check_tensor(op, f"{name}[{i}]", x, index)


def triton_available() -> bool:
    return triton_op("jagged_mean_pool") is not None


def get_backend() -> str:
    name = getattr(_state, "backend", None) or os.environ.get("DV365_BACKEND", "auto")
    if name not in BACKENDS:
        raise ValueError(f"dv365_ops: backend must be one of {BACKENDS}, got {name!r} (DV365_BACKEND?)")
    return name


def set_backend(name: str | None) -> None:
    """Set this thread's backend (``None`` goes back to ``DV365_BACKEND`` or ``auto``)."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"dv365_ops: backend must be one of {BACKENDS}, got {name!r}")
    if name == "triton" and not triton_available():
        raise RuntimeError("dv365_ops.set_backend('triton'): Triton is not installed (pip install triton), so no op "
                           "has a Triton kernel; 'auto' and 'native' use the compiled kernels")
    _state.backend = name


@contextlib.contextmanager
def use_backend(name: str):
    previous = getattr(_state, "backend", None)
    set_backend(name)
    try:
        yield
    finally:
        _state.backend = previous


# The dispatcher's registrations do not change while a program is traced, and torch.compile cannot trace the
# query itself (a torch._C call that returns a bool): it is run once at trace time and taken as a constant.
@torch.compiler.assume_constant_result
def has_native_kernel(op_name: str, device_type: str) -> bool:
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"dv365::{op_name}", key)


def triton_op(op_name: str):
    """The ``dv365::<op>_triton`` op, or None when Triton kernels are not registered."""
    return getattr(torch.ops.dv365, f"{op_name}_triton", None)


def resolve(op_name: str, device: torch.device):
    """The op (an OpOverloadPacket) that serves ``op_name`` on ``device`` under the current backend."""
    native = getattr(torch.ops.dv365, op_name)
    backend = get_backend()
    if backend == "native" or op_name not in TRITON_OPS:
        return native
    tri = triton_op(op_name)
    if backend == "triton":
        if tri is None:
            raise RuntimeError(f"dv365::{op_name}: the Triton backend was requested (DV365_BACKEND=triton?) but Triton "
                               f"is not installed (pip install triton); use 'auto' or 'native'")
        return tri
    if device.type == "cuda" and tri is not None and (op_name in AUTO_TRITON or not has_native_kernel(op_name, "cuda")):
        return tri
    return native
