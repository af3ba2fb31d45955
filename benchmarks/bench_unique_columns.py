"""The sparse pooling backward's renumbering of the id columns to their touched rows, three ways
(``dv365_ops.slicing._unique_columns``): one ``torch.unique`` per column, one ``unique`` of the stacked columns,
and the mark vector with its running sum. Interleaved repeats, medians; every way's result is checked against
the per-column ``unique`` first.

    python benchmarks/bench_unique_columns.py                      # CPU: 300K events a column
    python benchmarks/bench_unique_columns.py --device cuda --events 620000 --out r.json   # W40K, one timeline
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import torch

import dv365_ops  # noqa: F401
from dv365_ops.slicing import _unique_columns

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import environment  # noqa: E402

METHODS = ("per column", "sort", "mark")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--events", type=int, default=300_000, help="ids a column (W40K: ~0.6M, a timeline of 32 examples)")
    p.add_argument("--rows", default="1000000,200000,10000", help="the columns' table rows (W40K's vocabularies)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(args.seed)
    rows = [int(r) for r in args.rows.split(",")]
    # skewed ids (a few hot rows, a long tail), as interaction logs are
    cols = [(torch.rand(args.events, generator=g).pow(3) * n).long().clamp_max(n - 1).to(device) for n in rows]
    ids, num_rows = cols + cols[:1], rows + rows[:1]  # one column pooled by two tables, as in the default spec
    expected = [torch.unique(i, sorted=True, return_inverse=True) for i in ids]
    for m in METHODS:
        got = _unique_columns(ids, num_rows, m)
        for t, (r, inv) in enumerate(expected):
            assert torch.equal(got[0][t], r) and torch.equal(got[1][t], inv), (m, t)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = {m: [] for m in METHODS}
    for _ in range(args.repeats + 1):
        for m in METHODS:
            sync()
            t0 = time.perf_counter()
            _unique_columns(ids, num_rows, m)
            sync()
            times[m].append(time.perf_counter() - t0)
    med = {m: statistics.median(v[1:]) * 1e3 for m, v in times.items()}
    touched = [r.numel() for r, _ in expected[: len(cols)]]
    result = {"environment": environment(), "device": str(device), "events_per_column": args.events, "rows": rows,
              "touched_rows": touched, "repeats": args.repeats, "seed": args.seed, "ms": med}
    print(f"# renumbering {len(cols)} id columns ({len(ids)} tables) of {args.events:,} ids, rows {rows}, "
          f"touched {touched}, on {device}\n\n{result['environment']}\n")
    print("| method | ms (median) | vs per column |")
    print("| --- | ---: | ---: |")
    for m in METHODS:
        print(f"| {m} | {med[m]:.3f} | {med['per column'] / med[m]:.2f}x |")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
