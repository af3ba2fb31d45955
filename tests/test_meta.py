"""Every torch.ops.dv365 op has a fake impl and an opcheck test.

Each family's test module declares ``OPCHECK_SAMPLES = {op_name: sample_fn}`` and runs
``torch.library.opcheck`` over it; this test fails when an op is missing from all of them.
"""

import importlib
import pathlib

import torch

import dv365_ops  # noqa: F401

TEST_DIR = pathlib.Path(__file__).parent


def _dv365_ops() -> set[str]:
    return {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("dv365::")}


def _opchecked() -> set[str]:
    names: set[str] = set()
    for path in sorted(TEST_DIR.glob("test_*.py")):
        module = importlib.import_module(path.stem)
        names |= set(getattr(module, "OPCHECK_SAMPLES", {}))
    return names


def test_every_op_has_an_opcheck_test():
    missing = sorted(_dv365_ops() - _opchecked())
    assert not missing, f"ops without an opcheck test (add them to a test module's OPCHECK_SAMPLES): {missing}"


def test_every_op_has_a_fake_impl():
    from torch._library.simple_registry import singleton

    missing = []
    for name in sorted(_dv365_ops()):
        qualname = f"dv365::{name}"
        has_python_fake = singleton.find(qualname).fake_impl.kernel is not None
        has_meta = torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Meta")
        if not (has_python_fake or has_meta):
            missing.append(name)
    assert not missing, f"ops without a fake impl: {missing}"
