"""One W40K sliced_pool call (forward or a backward) after a warm-up, for ncu / compute-sanitizer:
    ncu --clock-control none --set full -k regex:pool_kernel -s 1 -c 1 python3 benchmarks/gpu/profile_sliced.py fwd
(-s 1 skips the warm-up call's launch). Knobs (DV365_SP_*) come from the environment."""

import argparse

import torch

import dv365_ops  # noqa: F401  (registers the ops)
import dv365_ops.testing as testing

ops = torch.ops.dv365


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("fwd", "bwd_dense", "bwd_rows"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--calls", type=int, default=2)
    a = p.parse_args()
    w = testing.w40k_workload(batch=a.batch, dim=256, dtype=getattr(torch, a.dtype), device="cuda", seed=0)
    args = (w["tables"], w["ids"], w["offsets"], w["ts"], w["cats"], w["floats"], w["request_ts"], w["prog_i"], w["prog_f"])
    pooled, wsum = ops.sliced_pool(*args)
    grad = torch.randn_like(pooled)
    rows = [t.shape[0] for t in w["tables"]]
    for _ in range(a.calls):
        if a.what == "fwd":
            ops.sliced_pool(*args)
        elif a.what == "bwd_dense":
            ops.sliced_pool_backward(grad, wsum, *args[1:], rows)
        else:
            ops.sliced_pool_backward_rows(grad, wsum, *args[1:])
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
