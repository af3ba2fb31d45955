"""The CPU kernels' two ISA copies (csrc/cpu/cpu_dispatch.h) agree, family by family.

Every CPU kernel file is compiled twice, for baseline x86-64 and for AVX2 + FMA + F16C, and runs the AVX2 copy
where the CPU has it unless ``DV365_CPU_BASELINE=1``, read once per process. So each copy runs in its own
process here, on the same inputs, and the outputs are compared: byte for byte where the op promises exact
results (the int4 codes, token pooling, the slice membership of ``slice_timeline``), within float32 rounding
where the AVX2 copy may fuse a multiply and an add (the pooled sums of ``jagged_mean_pool`` and
``sliced_pool``, and their backward ops).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

_SCRIPT = r'''
import sys
import torch
import dv365_ops
from dv365_ops.testing import w40k_workload

T = torch.ops.dv365
torch.manual_seed(0)
out = {"isa": dv365_ops._C.cpu_isa}

# int4: odd widths and spans, every input dtype, both scale formats
x = torch.randn(97, 264) * 10.0 ** torch.randint(-3, 4, (97, 1))
for dt in (torch.float32, torch.bfloat16, torch.float16):
    for half in (False, True):
        p = T.int4_quantize(x.to(dt), half)
        out[f"int4_quantize {dt} {half}"] = p
        out[f"int4_dequantize {dt} {half}"] = T.int4_dequantize(p, half, dt)

# token pooling: both layouts, strides with full and partial windows, every dtype
for dt in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    for name, y in (("rows", torch.randn(3, 19, 37)), ("token-major", torch.randn(3, 37, 72).transpose(1, 2))):
        y = y.to(dt)
        for s in (2, 3, 4, 40):
            pooled = T.token_pool(y, s)
            out[f"token_pool {dt} {name} {s}"] = pooled
            out[f"token_pool_backward {dt} {name} {s}"] = T.token_pool_backward(torch.randn_like(pooled), s, 37)

# jagged pooling: bags of 0 to 400 events, a width that is no multiple of the 64-column block
lengths = torch.randint(0, 400, (300,))
offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
n = int(offsets[-1])
ids = torch.randint(0, 5000, (n,))
w = torch.rand(n)
for dt in (torch.float32, torch.float64, torch.bfloat16):
    table = torch.randn(5000, 200).to(dt)
    grad = torch.randn(300, 200).to(dt)
    out[f"jagged_mean_pool {dt}"] = T.jagged_mean_pool(table, ids, offsets, w, False)
    out[f"jagged_mean_pool_backward {dt}"] = T.jagged_mean_pool_backward(grad, ids, offsets, w, 5000)
    out[f"jagged_mean_pool_backward_rows {dt}"] = T.jagged_mean_pool_backward_rows(grad, ids, offsets, w)

# slicing: a small W40K-like batch with the default program
wk = w40k_workload(batch=2, dim=40)
wk["tables"] = [t[:, :40].contiguous() for t in wk["tables"]]
timeline = {k: wk[k] for k in ("ids", "offsets", "ts", "cats", "floats", "request_ts", "prog_i", "prog_f")}
values, weights, lengths = T.slice_timeline(*timeline.values())
out["slice_timeline values"], out["slice_timeline weights"], out["slice_timeline lengths"] = values, weights, lengths
pooled, weight_sum = T.sliced_pool(wk["tables"], *timeline.values(), False)
out["sliced_pool pooled"], out["sliced_pool weight_sum"] = pooled, weight_sum
g = torch.randn_like(pooled)
rest = list(timeline.values())[1:]
out["sliced_pool_backward"] = T.sliced_pool_backward(g, weight_sum, *timeline.values(), [t.shape[0] for t in wk["tables"]])
out["sliced_pool_backward_rows"] = T.sliced_pool_backward_rows(g, weight_sum, *timeline.values())
torch.save(out, sys.argv[1])
'''

# results the ops promise exactly, by key prefix; the rest may differ by FMA rounding
_EXACT = ("int4_", "token_pool", "slice_timeline", "sliced_pool weight_sum")


def _cpu_flags() -> set[str]:
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _run(tmp_path: pathlib.Path, name: str, baseline: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DV365_CPU_BASELINE"}
    if baseline:
        env["DV365_CPU_BASELINE"] = "1"
    path = tmp_path / f"{name}.pt"
    subprocess.run([sys.executable, "-c", _SCRIPT, str(path)], check=True, env=env)
    return torch.load(path)


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    if not {"avx2", "fma", "f16c"} <= _cpu_flags():
        pytest.skip("this CPU runs the baseline copy only (no AVX2 + FMA + F16C): nothing to compare")
    tmp = tmp_path_factory.mktemp("isa")
    return _run(tmp, "avx2", baseline=False), _run(tmp, "baseline", baseline=True)


def test_each_process_ran_the_copy_it_asked_for(copies):
    fast, base = copies
    assert fast["isa"] == "avx2"
    assert base["isa"] == "baseline"


def _flat(v) -> list[torch.Tensor]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def test_every_family_is_compared(copies):
    fast, _ = copies
    families = {"int4_quantize", "int4_dequantize", "token_pool", "token_pool_backward", "jagged_mean_pool",
                "jagged_mean_pool_backward", "jagged_mean_pool_backward_rows", "slice_timeline", "sliced_pool",
                "sliced_pool_backward", "sliced_pool_backward_rows"}
    assert families <= {k.split(" ")[0] for k in fast}


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "within-rounding"])
def test_the_two_copies_agree(copies, exact):
    fast, base = copies
    keys = [k for k in fast if k != "isa" and k.startswith(_EXACT) == exact]
    assert keys
    for key in keys:
        for a, b in zip(_flat(fast[key]), _flat(base[key]), strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape, key
            if exact:
                assert torch.equal(a, b), key
            else:
                tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[a.dtype]
                torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=key)
