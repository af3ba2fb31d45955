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


def define(op_name: str, fn: Callable, fake: Callable) -> None:
    """Register ``fn`` as ``dv365::<op_name>_triton`` with the schema of ``dv365::<op_name>`` and ``fake``
    (the family module's fake of the native op, where it has one)."""
    op = torch.library.custom_op(f"dv365::{op_name}_triton", fn, mutates_args=(), schema=schema_of(op_name))
    op.register_fake(fake)


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


def raise_failed(
    op_name: str, failures: list[tuple[torch.Tensor, str | Callable[[], str]]], extra: torch.Tensor | None = None
):
    """Read every boolean check tensor (and the int64 ``extra`` values) in one device read, raise for the first
    check that failed, and return ``extra`` as a list. A callable message runs only for the failed check: it may
    read the few values it names (the first bad index and value), as the compiled kernels' messages do."""
    parts = [cond.reshape(1).long() for cond, _ in failures] + ([extra.long().reshape(-1)] if extra is not None else [])
    values = torch.cat(parts).tolist() if parts else []
    for bad, (_, message) in zip(values, failures):
        if bad:
            raise RuntimeError(f"dv365::{op_name}: {message() if callable(message) else message}")
    return values[len(failures) :]


def first_true(mask: torch.Tensor) -> int:
    """The flat index of the first True of ``mask`` (which holds one): an error path's read of one value."""
    return int(mask.reshape(-1).nonzero()[0, 0])


def check(cond: bool, op_name: str, message: str) -> None:
    if not cond:
        raise RuntimeError(f"dv365::{op_name}: {message}")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
