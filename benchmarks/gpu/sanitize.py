"""Runs every CUDA kernel of dv365 once on small inputs, for compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/gpu/sanitize.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python benchmarks/gpu/sanitize.py
    SANITIZE_KNOBS=SORT compute-sanitizer ... (the defaults and only the knob variants that set DV365_SP_SORT)

Covers every dtype path of the slicing kernels (they keep per-dtype shared-memory accumulators), the
multi-group path (a table with more slices than one CTA holds), and inputs the kernels must reject without
reading out of bounds (ids out of range, bad offsets, cats out of [0, 63]).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests"))

import dv365_ops  # noqa: E402,F401
from dv365_ops import testing  # noqa: E402
from cuda_inputs import random_offsets, random_sliced_inputs  # noqa: E402

ops = torch.ops.dv365


def expect_error(fn, *args) -> None:
    try:
        fn(*args)
    except RuntimeError as e:
        assert "dv365::" in str(e), e
    else:
        raise AssertionError("bad input was accepted")


# work items of 64 events; each table in one CTA block (the per-event backward stores its rows), one group per block
# (the zeroed-atomics path), 3-group blocks; 16 rows in flight; the predicates in the pooling kernels (no keep pass);
# the dense backward without its per-batch sort by row
SP_VARIANTS = ({"DV365_SP_ITEM": "64"}, {"DV365_SP_GROUPS": "32"}, {"DV365_SP_GROUPS": "1"}, {"DV365_SP_ROWS": "16"},
               {"DV365_SP_ROWS": "16", "DV365_SP_GROUPS": "3"}, {"DV365_SP_KEEP": "0"}, {"DV365_SP_SORT": "0"})
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def grouped_program(dtype) -> None:
    """W40K's grouped program through sliced_pool and both backwards, under this process's DV365_SP_* knobs."""
    dev = "cuda"
    rows = (300, 200, 100)
    tl = testing.random_timeline([700, 0, 90], table_rows=rows, cat_cardinality=testing.W40K_CAT_CARDINALITY,
                                 span_days=10, device=dev)
    pi, pf = (t.to(dev) for t in testing.w40k_program(rows))
    tables = [torch.randn(r, 40, device=dev).to(dtype) for r in rows]
    targs = (tl["ids"], tl["offsets"], tl["ts"], tl["cats"], tl["floats"], tl["request_ts"], pi, pf)
    pooled, wsum = ops.sliced_pool(tables, *targs)
    grad = torch.randn_like(pooled)
    ops.sliced_pool_backward(grad, wsum, *targs, list(rows))
    ops.sliced_pool_backward_rows(grad, wsum, *targs)
    torch.cuda.synchronize()


def main() -> None:
    if "--sp-variant" in sys.argv:
        for dtype in DTYPES:
            grouped_program(dtype)
        return
    dev = "cuda"
    count = 0
    for dtype in DTYPES:
        lengths = [37, 0, 300, 5]
        n = sum(lengths)
        offsets = random_offsets(lengths, dev)
        table = torch.randn(50, 40, device=dev).to(dtype)
        ids = torch.randint(0, 50, (n,), device=dev)
        w = torch.rand(n, device=dev)
        out = ops.jagged_mean_pool(table, ids, offsets, w)
        ops.jagged_mean_pool_backward(torch.randn_like(out), ids, offsets, w, 50)
        ops.jagged_mean_pool_backward_rows(torch.randn_like(out), ids, offsets, None)
        x = torch.randn(3, 7, 21, device=dev).to(dtype)
        ops.token_pool(x, 4)
        ops.token_pool_backward(torch.randn(3, 7, 6, device=dev).to(dtype), 4, 21)
        for stride in (1, 2, 3, 4, 8):  # full windows: the vector kernels, tails included
            x = torch.randn(5, 3, 24 * stride + 1, device=dev).to(dtype)[..., 1:].contiguous()
            out = ops.token_pool(x, stride)
            ops.token_pool_backward(torch.randn_like(out), stride, x.shape[-1])
        if dtype != torch.float64:  # the int4 codes take float32, bfloat16 and float16
            for half in (False, True):
                for rows, d in ((9, 34), (33, 256), (5, 4096)):  # loop, register and long-row kernels
                    packed = ops.int4_quantize(torch.randn(rows, d, device=dev).to(dtype), half)
                    ops.int4_dequantize(packed, half, dtype)
        # 150 slices of one table: several groups; D = 130 (scalar columns), 40 and 264 (16-byte chunks, a
        # lane's chunk past D, a second column tile)
        for s_count, t_count, d in ((9, 2, 130), (150, 1, 130), (40, 2, 40), (20, 3, 264)):
            inputs = random_sliced_inputs([200, 0, 70], s_count, t_count, d, dtype, dev)
            tables, sids, soff, ts, cats, floats, req, pi, pf = inputs
            pooled, wsum = ops.sliced_pool(*inputs)
            grad = torch.randn_like(pooled)
            ops.sliced_pool_backward(grad, wsum, sids, soff, ts, cats, floats, req, pi, pf, [t.shape[0] for t in tables])
            ops.sliced_pool_backward_rows(grad, wsum, sids, soff, ts, cats, floats, req, pi, pf)
            ops.slice_timeline(sids, soff, ts, cats, floats, req, pi, pf)
        grouped_program(dtype)
        count += 1
    # bad inputs: rejected, never read out of bounds
    bad_ids = ids.clone()
    bad_ids[3] = 10**12
    expect_error(ops.jagged_mean_pool, table, bad_ids, offsets, None)
    expect_error(ops.jagged_mean_pool_backward, torch.randn(4, 40, device=dev).to(dtype), bad_ids, offsets, None, 50)
    expect_error(ops.jagged_mean_pool, table, ids, torch.tensor([0, 300, 10, 342], device=dev), None)
    inputs = list(random_sliced_inputs([200, 0, 70], 9, 2, 16, torch.float32, dev))
    inputs[1] = [inputs[1][0].clone(), inputs[1][1]]
    inputs[1][0][7] = -3
    expect_error(ops.sliced_pool, *inputs)
    inputs = list(random_sliced_inputs([200, 0, 70], 9, 2, 16, torch.float32, dev))
    inputs[2] = torch.tensor([0, 400, 100, 270], device=dev)
    expect_error(ops.sliced_pool, *inputs)
    torch.cuda.synchronize()
    # the kernel variants of the DV365_SP_* knobs, which the ops read once per process: a child process each
    # (compute-sanitizer follows child processes)
    # SANITIZE_KNOBS=SORT,KEEP: only the variants setting one of those knobs (racecheck of every variant takes
    # over five minutes)
    only = [k for k in os.environ.get("SANITIZE_KNOBS", "").split(",") if k]
    variants = [env for env in SP_VARIANTS if not only or any(f"DV365_SP_{k}" in env for k in only)]
    for env in variants:
        subprocess.run([sys.executable, __file__, "--sp-variant"], env={**os.environ, **env}, check=True)
    print(f"sanitize.py: every CUDA kernel ran ({count} dtypes, {len(variants)} knob variants) and bad inputs "
          "were rejected")


if __name__ == "__main__":
    main()
