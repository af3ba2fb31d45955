"""The sparse table update of a W40K training step (``RowWiseAdagrad.step`` over the default spec's 15 pooled
tables), three ways, on the same gradients:

- **one launch** (``RowWiseAdagrad``, fused, the default on CUDA): every table in one Triton launch, nothing read
  back from the device;
- **per table** (the update before it): a device read of whether each gradient's indices are sorted and unique
  (``_flag_sorted_unique_grads``), then one Triton launch per table;
- **torch ops** (``RowWiseAdagrad(fused=False)``, the CPU's path): ``unique`` per index tensor, about ten torch
  kernels per table.

The gradients are shaped as the pooling op returns them: the 15 tables pool 6 id columns (each timeline's media,
author and topic ids), the tables of one column share its index tensor (the column's touched rows, sorted and
unique), and every gradient arrives without its coalesced flag (autograd's accumulation drops it). Each timed call
rebuilds the 15 sparse gradients from the same indices and values (as every training step gets fresh ones), the
same for every way. Three times per way, interleaved, medians:

- ``step ms``: one update, the device synchronized before and after: what the staged ``bench_train`` reports;
- ``host ms``: until ``step()`` returns (the device synchronized before): what the host spends, which the GPU can
  overlap with the next step's work unless the update waits for the device;
- ``back to back ms``: 10 updates without a sync between them, per update: the throughput when host and device
  overlap.

Every way's result is first checked against the torch ops on a smaller copy.

    python benchmarks/bench_table_update.py --device cuda --out r.json        # W40K: D = 256, 350K/160K/10K rows
    python benchmarks/bench_table_update.py --scale 0.001                     # CPU smoke run (Triton interpreter)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

from dv365.train.optim import RowWiseAdagrad, _flag_sorted_unique_grads  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import environment  # noqa: E402

# the default spec's pooled tables: (timeline, id column) -> tables pooling it
COLUMNS = {("exp", "media"): 2, ("exp", "author"): 1, ("exp", "topic"): 1,
           ("imp", "media"): 5, ("imp", "author"): 4, ("imp", "topic"): 2}
WAYS = ("one launch", "per table", "torch ops")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--rows", default="1000000,200000,10000", help="media, author, topic table rows (W40K's)")
    p.add_argument("--touched", default="350000,160000,10000",
                   help="touched rows a step per media, author, topic column")
    p.add_argument("--scale", type=float, default=1.0, help="multiply rows and touched rows (a CPU smoke run: 0.001)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    kinds = ("media", "author", "topic")
    rows = {k: max(2, int(int(n) * args.scale)) for k, n in zip(kinds, args.rows.split(","))}
    touched = {k: max(1, min(rows[k], int(int(n) * args.scale))) for k, n in zip(kinds, args.touched.split(","))}

    _check(device, args.seed)

    g = torch.Generator().manual_seed(args.seed)
    tables, grads = [], []  # grads: (index tensor [1, nnz] shared by the column's tables, values, shape)
    for (timeline, kind), n_tables in COLUMNS.items():
        idx = torch.randperm(rows[kind], generator=g)[: touched[kind]].sort().values.to(device)[None]
        for _ in range(n_tables):
            tables.append(torch.nn.Parameter(torch.randn(rows[kind], args.dim, device=device) * 0.1))
            grads.append((idx, torch.randn(touched[kind], args.dim, device=device), (rows[kind], args.dim)))
    opts = {"one launch": RowWiseAdagrad(tables, lr=0.05, fused=True),
            "per table": RowWiseAdagrad(tables, lr=0.05, fused=True),
            "torch ops": RowWiseAdagrad(tables, lr=0.05, fused=False)}

    def fresh_grads():
        for p, (idx, values, shape) in zip(tables, grads):
            p.grad = torch.sparse_coo_tensor(idx, values, shape, check_invariants=False)

    steps = {"one launch": opts["one launch"].step, "per table": lambda: _per_table(opts["per table"]),
             "torch ops": opts["torch ops"].step}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = {w: {"step": [], "host": [], "back to back": []} for w in WAYS}
    for rep in range(args.repeats + 1):  # the first round warms up (compiles the kernels)
        for w in WAYS:
            fresh_grads()
            sync()
            t0 = time.perf_counter()
            steps[w]()
            t1 = time.perf_counter()
            sync()
            t2 = time.perf_counter()
            fresh_grads()
            sync()
            t3 = time.perf_counter()
            for _ in range(10):
                fresh_grads()
                steps[w]()
            sync()
            t4 = time.perf_counter()
            if rep:
                times[w]["step"].append(t2 - t0)
                times[w]["host"].append(t1 - t0)
                times[w]["back to back"].append((t4 - t3) / 10)
    med = {w: {k: statistics.median(v) * 1e3 for k, v in t.items()} for w, t in times.items()}
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"# the sparse table update: {len(tables)} tables, D = {args.dim}, {len(COLUMNS)} id columns, touched rows "
          f"{', '.join(f'{k} {touched[k]:,} of {rows[k]:,}' for k in kinds)}, on {gpu or 'CPU'}\n")
    print(environment() + "\n")
    print("| way | step ms | host ms | back to back ms | back to back vs per table |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for w in WAYS:
        m = med[w]
        print(f"| {w} | {m['step']:.3f} | {m['host']:.3f} | {m['back to back']:.3f} | "
              f"{med['per table']['back to back'] / m['back to back']:.2f}x |")
    if device.type != "cuda":
        print("\n(CPU: the Triton kernels run in the interpreter, so only the torch ops' times mean anything)")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(
            {"environment": environment(), "gpu": gpu, "tables": len(tables), "dim": args.dim, "rows": rows,
             "touched": touched, "ms": med}, indent=1))
    return 0


def _per_table(opt: RowWiseAdagrad) -> None:
    """The update before the one-launch path: a device read of which gradients are sorted and unique (all of
    these are), then one launch per table."""
    from dv365.train._adagrad_triton import rowwise_adagrad_update

    params = [p for g in opt.param_groups for p in g["params"]]
    _flag_sorted_unique_grads(params)
    for group in opt.param_groups:
        for p in group["params"]:
            assert p.grad.is_coalesced()
            rowwise_adagrad_update(p, opt._state_sum(p), p.grad.indices()[0], p.grad.values(), group["lr"],
                                   group["eps"], group["weight_decay"])


def _check(device: torch.device, seed: int) -> None:
    """The three ways agree on a small copy of the workload (a shared index tensor, an own one, repeated rows)."""
    g = torch.Generator().manual_seed(seed)
    start = [torch.randn(50, 24, generator=g) for _ in range(3)]
    shared = torch.unique(torch.randint(0, 50, (30,), generator=g))[None]
    own = torch.unique(torch.randint(0, 50, (20,), generator=g))[None]
    values = [torch.randn(shared.shape[1], 24, generator=g), torch.randn(shared.shape[1], 24, generator=g),
              torch.randn(own.shape[1], 24, generator=g)]
    results = {}
    for w in WAYS:
        ps = [torch.nn.Parameter(s.clone().to(device)) for s in start]
        opt = RowWiseAdagrad(ps, lr=0.05, fused=w != "torch ops")
        for _ in range(2):
            for p, i, v in zip(ps, (shared, shared, own), values):
                p.grad = torch.sparse_coo_tensor(i.to(device), v.to(device), (50, 24), check_invariants=False)
            _per_table(opt) if w == "per table" else opt.step()
        results[w] = [p.detach().cpu() for p in ps]
    for w in WAYS:
        for a, b in zip(results[w], results["torch ops"]):
            torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-6, msg=w)


if __name__ == "__main__":
    sys.exit(main())
