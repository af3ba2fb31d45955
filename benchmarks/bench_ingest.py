"""``dv365 ingest`` throughput on a MovieLens-like rating log: rows/s at several sizes, to show the time grows
linearly (up to the ``n log n`` sorts), and optionally the implementation of an earlier commit on the same files.

    python benchmarks/bench_ingest.py [--rows 1000000 2000000 5000000 10000000] [--baseline REV --baseline-max-rows N]
                                      [--json out.json]

The log has ~100 ratings per user (users = rows / 100, items = rows / 50, Zipf-popular), half of them likes
(rating >= 4), timestamps over five years as integers; the CSV is written once per size into a temporary folder.
Times are wall clock for the whole ``ingest()`` (read, parse, sort, examples, Parquet write with checksums) and
the process CPU time. ``pytest benchmarks/bench_ingest.py`` times a 200,000-row file with pytest-benchmark.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from dv365.data import ingest

MAPPING = {"user": "userId", "item": "movieId", "timestamp": "timestamp", "rating": "rating"}
ROOT = pathlib.Path(__file__).resolve().parent.parent


def write_log(path: pathlib.Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    users = max(rows // 100, 1)
    items = max(rows // 50, 1)
    user = rng.integers(0, users, rows)
    item = np.minimum(rng.zipf(1.3, rows), items) - 1
    rating = rng.integers(1, 11, rows) / 2.0
    ts = 1_420_070_400 + rng.integers(0, 5 * 365 * 86_400, rows)
    table = pa.table({"userId": user, "movieId": item, "rating": rating, "timestamp": ts})
    pacsv.write_csv(table, path)


def load_baseline(rev: str):
    """``dv365.data.ingest`` as of git revision ``rev``, loaded beside the current one (its module was
    ``ingest.py`` before it became ``ingestion.py``)."""
    for name in ("ingestion.py", "ingest.py"):
        show = subprocess.run(["git", "show", f"{rev}:python/dv365/data/{name}"], cwd=ROOT, capture_output=True, text=True)
        if show.returncode == 0:
            src = show.stdout
            break
    else:
        raise SystemExit(f"bench_ingest: {rev} has no python/dv365/data/ingestion.py or ingest.py")
    mod = types.ModuleType("dv365.data._ingest_baseline")
    mod.__package__ = "dv365.data"
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, f"{rev}:ingest.py", "exec"), mod.__dict__)
    return mod.ingest


def run_once(fn, path: pathlib.Path, out: pathlib.Path, **kw) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn(path, out, MAPPING, like_threshold=4, overwrite=True, **kw)
    return time.perf_counter() - t0, time.process_time() - c0


def versions() -> dict[str, str]:
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {_cpus()} CPUs",
            "python": platform.python_version(), "numpy": np.__version__, "pyarrow": pa.__version__,
            "torch": torch.__version__, "commit": commit}


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 2_000_000, 5_000_000, 10_000_000])
    p.add_argument("--baseline", default=None, help="also time ingest() of this git revision (e.g. 6250a77)")
    p.add_argument("--baseline-max-rows", type=int, default=2_000_000, help="sizes above this skip the baseline")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    baseline = load_baseline(args.baseline) if args.baseline else None
    results = []
    with tempfile.TemporaryDirectory(prefix="dv365-bench-ingest-") as tmp:
        tmp = pathlib.Path(tmp)
        for rows in args.rows:
            log = tmp / f"ratings-{rows}.csv"
            write_log(log, rows)
            mb = log.stat().st_size / 1e6
            wall, cpu = run_once(ingest, log, tmp / "ds", max_bad_fraction=1.0)
            results.append({"rows": rows, "csv_mb": round(mb, 1), "impl": "dv365", "wall_s": wall, "cpu_s": cpu})
            print(f"{rows:>12,} rows  {mb:7.1f} MB  dv365 {wall:7.2f} s", file=sys.stderr)
            if baseline is not None and rows <= args.baseline_max_rows:
                wall, cpu = run_once(baseline, log, tmp / "ds")
                results.append({"rows": rows, "csv_mb": round(mb, 1), "impl": f"baseline {args.baseline}",
                                "wall_s": wall, "cpu_s": cpu})
                print(f"{rows:>12,} rows  {mb:7.1f} MB  baseline {wall:7.2f} s", file=sys.stderr)
            log.unlink()
    info = versions()
    print(f"dv365 ingest, {info['date']}, {info['machine']}, Python {info['python']}, numpy {info['numpy']}, "
          f"pyarrow {info['pyarrow']}, torch {info['torch']}, commit {info['commit']}\n")
    print("| rows | CSV MB | implementation | wall s | CPU s | rows/s (wall) | µs per row |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['rows']:,} | {r['csv_mb']} | {r['impl']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
              f"{r['rows'] / r['wall_s']:,.0f} | {1e6 * r['wall_s'] / r['rows']:.2f} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"versions": info, "results": results}, indent=1))
    return 0


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("ingest") / "ratings.csv"
    write_log(path, 200_000)
    return path


def test_ingest_200k(benchmark, small_log, tmp_path):
    benchmark.pedantic(lambda: ingest(small_log, tmp_path / "ds", MAPPING, like_threshold=4, overwrite=True),
                       rounds=3, iterations=1)


if __name__ == "__main__":
    sys.exit(main())
