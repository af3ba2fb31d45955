"""Helpers for the Python side of the ops' argument checks (docs/design.md#ops-contract).

Each family module (``jagged``, ``token_pool``, ``int4``, ``slicing``) writes the metadata checks of its ops
once, as a function that its fake (meta) implementations and its Triton wrappers both call, so that the three
paths accept exactly what the compiled kernels accept. The messages are the compiled kernels' (csrc/): dtypes
and shapes are printed as c10 prints them (``Long``, ``[2, 3]``), so one input gives one message on every backend.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# c10::toString(ScalarType), which the compiled kernels' messages use
_C10_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
    torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
    torch.bool: "Bool", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}

FLOAT_TYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def dtype_name(dtype: torch.dtype) -> str:
    return _C10_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def sizes(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check(op: str, cond, message: Callable[[], str]) -> None:
    """Raise ``RuntimeError("dv365::<op>: <message>")`` unless ``cond``. A symbolic ``cond`` (a fake tensor's
    dynamic shape) becomes a runtime assert instead of a guard."""
    torch._check(cond, lambda: f"dv365::{op}: {message()}")


def check_same_device(op: str, name: str, x: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    """The compiled kernels' device rule: every tensor argument lives on the device of the reference one."""
    if x.device != ref.device:
        raise RuntimeError(f"dv365::{op}: {name} must be on the same device as {ref_name} ({ref.device}), "
                           f"got {x.device}")
