"""Triton kernels for dv365 ops, registered as ``torch.ops.dv365.<op>_triton`` (issue 4)."""
