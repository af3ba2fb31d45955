"""What every Triton family shares: op registration with the native op's schema, the device rule, and
the data-dependent checks that cost a device sync."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, so the module-level value is the one in force.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def schema_of(op_name: str) -> str:
    """The native op's schema without its name: the ``_triton`` op takes exactly the same arguments."""
    schema = str(getattr(torch.ops.dv365, op_name).default._schema)
    return schema[schema.index("(") :]


def define(op_name: str, fn: Callable, family, fake: Callable) -> None:
    """Register ``fn`` as ``dv365::<op_name>_triton`` with the schema of ``dv365::<op_name>``, and the family
    module's fake (``_fake_<op_name>``, shared with the native op) or ``fake`` where the family has none."""
    op = torch.library.custom_op(f"dv365::{op_name}_triton", fn, mutates_args=(), schema=schema_of(op_name))
    op.register_fake(getattr(family, f"_fake_{op_name}", fake))


def register_autograd(op_name: str, family, backward: Callable, setup_context: Callable) -> None:
    """Autograd of ``dv365::<op_name>_triton``: the family's ``_setup_context_<op>``/``_backward_<op>`` pair
    (whose backward resolves its ops through ``_backend.resolve``), or the given pair where the family has none."""
    fam_backward = getattr(family, f"_backward_{op_name}", None)
    fam_setup = getattr(family, f"_setup_context_{op_name}", None)
    if fam_backward is not None and fam_setup is not None:
        backward, setup_context = fam_backward, fam_setup
    torch.library.register_autograd(f"dv365::{op_name}_triton", backward, setup_context=setup_context)


def num_passed_inputs(op_name: str, inputs: tuple) -> int:
    """How many inputs autograd expects gradients for: the dispatcher drops trailing arguments equal to their
    defaults before autograd sees them, while ``setup_context`` gets them filled back in."""
    arguments = getattr(torch.ops.dv365, op_name).default._schema.arguments
    n = len(inputs)
    while n and arguments[n - 1].has_default_value():
        value, default = inputs[n - 1], arguments[n - 1].default_value
        if not (value is default or (not isinstance(value, torch.Tensor) and value == default)):
            break
        n -= 1
    return n


def check_device(op_name: str, *tensors: torch.Tensor) -> None:
    """Triton kernels run on CUDA tensors, and on CPU tensors only under ``TRITON_INTERPRET=1``."""
    for t in tensors:
        if t.device.type == "cuda" or (t.device.type == "cpu" and INTERPRET):
            continue
        raise RuntimeError(
            f"dv365::{op_name}: the Triton kernels need CUDA tensors (CPU tensors only with TRITON_INTERPRET=1 "
            f"set before importing triton), got a {t.device.type} tensor"
        )


def checks_enabled(device: torch.device) -> bool:
    """Data-dependent checks (id ranges, monotone offsets) read device values back, a sync that a CUDA graph
    capture forbids: they run unless the current stream is capturing."""
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def raise_failed(op_name: str, failures: list[tuple[torch.Tensor, str]], extra: torch.Tensor | None = None):
    """Read every boolean check tensor (and the int64 ``extra`` values) in one device read, raise for the first
    check that failed, and return ``extra`` as a list."""
    parts = [cond.reshape(1).long() for cond, _ in failures] + ([extra.long().reshape(-1)] if extra is not None else [])
    values = torch.cat(parts).tolist() if parts else []
    for bad, (_, message) in zip(values, failures):
        if bad:
            raise RuntimeError(f"dv365::{op_name}: {message}")
    return values[len(failures) :]


def check(cond: bool, op_name: str, message: str) -> None:
    if not cond:
        raise RuntimeError(f"dv365::{op_name}: {message}")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
