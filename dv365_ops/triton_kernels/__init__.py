"""Triton kernels for dv365 ops, registered as ``torch.ops.dv365.<op>_triton`` with the native op's schema
(issue 4; choosing the implementation: ``docs/backends.md``). One module per family."""

from . import int4, jagged, slicing  # noqa: F401
