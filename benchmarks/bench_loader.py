"""Loader throughput (issue 16): the training path (examples/s) and the export path (users/s) on W40K-like data.

    python benchmarks/bench_loader.py --out loader.json [--users 256 --workers 1,2,4,8,16 --seconds 6 --dir DIR]

Generates a synthetic dataset (``dv365.data.generate``: ``--users`` users of mean ``--mean-length`` events, 64
users per shard) unless ``--dir`` holds one, then measures on the same data, correctness first (every variant's
first batches equal the Parquet path's):

- the Parquet path (``cache=False``: every shard decoded from Parquet in the loop), the old baseline;
- the columnar cache's build (once) and the cached training paths with 1..N worker threads and 1..N worker
  processes (``--modes``; processes write whole batches into shared memory, ``dv365.data.procs``), for slice-run
  gathers (the default for long rows), and with threads for index gathers (``np.take``, the default for short rows);
- the export path (``UserLoader``, cut-off after the last event) with 1..N worker threads and 1..N worker
  processes;
- with CUDA: pinned delivery plus the host-to-device copy of every batch (``batch.to("cuda", non_blocking=True)``),
  at the largest worker count.

On the GPU host (one command, under 4 minutes with the dataset's synthesis; ``--dir`` is reused when it holds one):

    python benchmarks/bench_loader.py --dir /tmp/w40k-2048 --users 2048 --workers 1,4,8,16 --seconds 3 --out loader.json

(2,048 users = 64 export batches of 32 per pass: enough that 16 workers spend little of a pass filling and
draining the pipeline.)

Per run (after one untimed pass): items/s and events/s on the wall clock, the process's CPU seconds, and events
per CPU-second (the sizing rule's "events/s per core"). A pass ends by draining the workers, so with many workers
and few batches per pass (``--users`` / batch size) the wall-clock rate understates the steady state.
Prints a markdown table and writes JSON to ``--out``. Runs unchanged on a CUDA host.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

try:
    import pyarrow  # noqa: F401
except ImportError:  # the data layer writes and first reads Parquet through pyarrow
    print("bench_loader: pyarrow is not installed; `pip install pyarrow` to generate the dataset. Nothing measured.")
    sys.exit(0)

import dv365.data.loader as loader_module
from dv365.data import Loader, SynthConfig, UserLoader, generate, open_dataset
from dv365.data.cache import build_cache


@dataclasses.dataclass
class Run:
    path: str  # "train" or "export"
    variant: str
    workers: int
    items: int  # examples or users
    events: int
    wall_s: float
    cpu_s: float

    @property
    def items_per_s(self) -> float:
        return self.items / self.wall_s

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s

    @property
    def events_per_cpu_s(self) -> float:
        return self.events / max(self.cpu_s, 1e-9)

    def row(self) -> str:
        unit = {"train": "examples", "export": "users", "build": "users"}.get(self.path)
        rate = f"{self.items_per_s:,.0f} {unit}" if unit else "-"
        return (f"| {self.path} | {self.variant} | {self.workers} | {rate} | "
                f"{self.events_per_s / 1e6:,.1f} | {self.cpu_s / self.wall_s:.2f} | {self.events_per_cpu_s / 1e6:,.1f} |")


def _measure(path: str, variant: str, workers: int, make_loader, seconds: float, device: str | None = None,
             warm: bool = True) -> Run:
    """Steady state: one untimed pass (shards mapped, memory pools filled), then whole passes of the same loader
    until ``seconds`` have passed. ``warm=False``: the first pass only, cut at ``seconds`` (the Parquet path: every
    shard decoded once per pass, as in an epoch over a dataset of many shards)."""
    loader = make_loader()

    def one_pass(deadline: float | None) -> tuple[int, int]:
        items = events = 0
        for b in loader:
            if device is not None:
                b = b.to(device, non_blocking=True)
                torch.cuda.synchronize()
            items += len(b)
            events += b.explicit.num_events + b.implicit.num_events
            if deadline is not None and time.perf_counter() > deadline:
                break
        return items, events

    if warm:
        one_pass(None)
    items = events = 0
    w0, c0 = time.perf_counter(), time.process_time() + _workers_cpu(loader)
    while True:
        i, e = one_pass(None if warm else w0 + seconds)
        items, events = items + i, events + e
        if not warm or time.perf_counter() - w0 >= seconds:
            break
    wall, cpu = time.perf_counter() - w0, time.process_time() + _workers_cpu(loader) - c0
    if hasattr(loader, "close"):
        loader.close()  # worker processes stop here, not when the loader is collected
    return Run(path, variant, workers, items, events, wall, cpu)


def _workers_cpu(loader) -> float:
    """CPU seconds used so far by the loader's worker processes (``/proc``; they live across passes), 0 for
    threads: a process loader's "CPU s" counts its workers' time, as a thread loader's counts its threads'."""
    pool = getattr(loader, "_pool", None)
    total = 0.0
    for p in (pool.procs if pool is not None else []):
        try:
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, ValueError, IndexError):
            pass
    return total


def _memcpy_floor(threads: int, seconds: float) -> Run:
    """The copy ceiling: ``threads`` threads each copying 64 MiB between reused buffers, counted as events at the
    40 bytes a batch holds per event (the loader reads ~24 and writes ~40 per event: it cannot beat this)."""
    from concurrent.futures import ThreadPoolExecutor

    n = 8 << 20
    bufs = [(np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)) for _ in range(threads)]

    def work(i: int) -> int:
        src, dst = bufs[i]
        copies, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            dst[:] = src
            copies += 1
        return copies

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))  # fault the pages in
        w0, c0 = time.perf_counter(), time.process_time()
        copies = sum(pool.map(work, range(threads)))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    events = copies * n * 8 // 40
    return Run("floor", "memcpy 40 B per event, reused buffers (ceiling)", threads, 0, events, wall, cpu)


def _same(a, b) -> bool:
    return all(torch.equal(getattr(x, f), getattr(y, f)) for x, y in ((a.explicit, b.explicit), (a.implicit, b.implicit))
               for f in ("offsets", "ids", "ts", "cats", "floats"))


def _check(reference, candidate, n: int = 3) -> None:
    for i, (a, b) in enumerate(zip(reference, candidate)):
        if not _same(a, b):
            raise SystemExit(f"bench_loader: batch {i} differs from the Parquet path's")
        if i + 1 == n:
            break


def _versions() -> dict:
    commit = os.environ.get("DV365_COMMIT", "")  # first: a copy of the tree elsewhere can carry a stale .git
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=Path(__file__).parent).stdout.strip()
        except OSError:
            commit = "?"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(), "cores": cores, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "pyarrow": pyarrow.__version__, "commit": commit,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON results path")
    p.add_argument("--users", type=int, default=256)
    p.add_argument("--mean-length", type=float, default=40_000)
    p.add_argument("--dir", help="dataset directory: reused if it holds one, else generated there (default: a temp dir)")
    p.add_argument("--workers", default=None, help="comma list (default 1,2,4,... up to the usable cores)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--export-batch-size", type=int, default=32,
                   help="users per export batch (small enough that a pass has batches for every worker)")
    p.add_argument("--seconds", type=float, default=6.0, help="time per measured run")
    p.add_argument("--modes", default="thread,process", help="worker kinds to measure (comma list)")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    info = _versions()
    cores = info["cores"]
    workers = [int(w) for w in args.workers.split(",")] if args.workers else \
        sorted({1, *[w for w in (2, 4, 8, 16, 32) if w <= cores], cores})
    device = "cuda" if torch.cuda.is_available() else None

    tmp = None
    root = Path(args.dir) if args.dir else Path(tmp := tempfile.mkdtemp(prefix="bench_loader."))
    t0 = time.perf_counter()
    if not (root / "manifest.json").exists():
        cfg = SynthConfig(mean_length=args.mean_length, num_items=200_000, num_authors=20_000, num_topics=1_000)
        print(f"generating {args.users} users of mean {args.mean_length:,.0f} events in {root} ...", flush=True)
        generate(args.users, seed=0, config=cfg).write(root, overwrite=True)
    ds = open_dataset(root)
    gen_s = time.perf_counter() - t0
    events_total = ds.counts["explicit"] + ds.counts["implicit"]
    cache = Path(tempfile.mkdtemp(prefix="bench_loader_cache."))  # a fresh cache: its build is measured
    print(f"{ds!r}; {events_total:,} events; setup {gen_s:.0f} s; {info}", flush=True)

    runs: list[Run] = []
    B, EB = args.batch_size, args.export_batch_size
    cutoff = int(ds.manifest["time_range"]["max_ts"]) + 1
    parquet = lambda w: Loader(ds, B, prefetch=2, workers=w, cache=False, pin_memory=False, mode="thread")  # noqa: E731
    cached = lambda w, pin=False, mode="thread": Loader(ds, B, prefetch=2, workers=w, cache=cache,  # noqa: E731
                                                        pin_memory=pin, mode=mode)
    export = lambda w, pin=False, mode="thread": UserLoader(ds, EB, cutoff=cutoff, workers=w, cache=cache,  # noqa: E731
                                                           pin_memory=pin, mode=mode)
    export_label = {"thread": "cache, slice-run gather, threads", "process": "cache, worker processes, shared memory"}
    train_label = {"thread": "cache, slice-run gather, threads", "process": "cache, worker processes, shared memory"}

    runs.append(_measure("train", "Parquet decode in the loop (cache=False)", 1, lambda: parquet(1), args.seconds,
                         warm=False))
    print(runs[-1].row(), flush=True)
    w0, c0 = time.perf_counter(), time.process_time()
    build_cache(ds, cache, workers=min(8, cores))
    build = Run("build", "columnar cache build (decode Parquet + write .npy), once", min(8, cores), ds.num_users,
                events_total, time.perf_counter() - w0, time.process_time() - c0)
    cache_bytes = sum(f.stat().st_size for f in cache.rglob("*.npy"))
    print(f"cache: {cache_bytes / events_total:.1f} bytes per event, {build.wall_s:.1f} s", flush=True)

    for mode in modes:
        _check(Loader(ds, B, prefetch=0, cache=False, pin_memory=False, mode="thread"), cached(max(2, max(workers)), mode=mode))
        _check(UserLoader(ds, EB, cutoff=cutoff, prefetch=0, cache=False, pin_memory=False),
               export(max(2, max(workers)), mode=mode), n=3)
    for mode in modes:
        for w in workers:
            runs.append(_measure("train", train_label[mode], w, lambda: cached(w, mode=mode), args.seconds))
            print(runs[-1].row(), flush=True)
    saved = loader_module._RUN_MIN_EVENTS
    loader_module._RUN_MIN_EVENTS = 1 << 62  # force the index gather
    try:
        _check(Loader(ds, B, prefetch=0, cache=False, pin_memory=False, mode="thread"), cached(2))
        for w in sorted({1, max(workers)}):
            runs.append(_measure("train", "cache, index gather (np.take)", w, lambda: cached(w), args.seconds))
            print(runs[-1].row(), flush=True)
    finally:
        loader_module._RUN_MIN_EVENTS = saved
    for mode in modes:
        for w in workers:
            runs.append(_measure("export", export_label[mode], w, lambda: export(w, mode=mode), args.seconds))
            print(runs[-1].row(), flush=True)
    if device is not None:
        w = max(workers)
        for mode in modes:
            runs.append(_measure("train", train_label[mode] + ", pinned", w, lambda: cached(w, True, mode), args.seconds))
            runs.append(_measure("train", train_label[mode] + ", pinned + H2D copy", w, lambda: cached(w, True, mode),
                                 args.seconds, device))
            runs.append(_measure("export", export_label[mode] + ", pinned", w, lambda: export(w, True, mode),
                                 args.seconds))
            runs.append(_measure("export", export_label[mode] + ", pinned + H2D copy", w,
                                 lambda: export(w, True, mode), args.seconds, device))
        print(*(r.row() for r in runs[-4 * len(modes):]), sep="\n", flush=True)

    for w in sorted({1, max(workers)}):
        runs.append(_memcpy_floor(w, min(args.seconds, 3.0)))
        print(runs[-1].row(), flush=True)

    header = ["| path | variant | workers | per s (wall) | M events/s | CPU s / wall s | M events / CPU s |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    title = (f"Loader throughput, {ds.num_users} users, {events_total:,} events (mean {events_total / ds.num_users:,.0f} "
             f"per user), {ds.num_shards} shards; B = {B} (train), {EB} (export); {info['machine']}, {cores} cores, "
             f"torch {info['torch']}, numpy {info['numpy']}, pyarrow {info['pyarrow']}, commit {info['commit']}, "
             f"{info['date']}{', ' + info['cuda'] if info['cuda'] else ''}")
    table = "\n".join([title, "", *header, *(r.row() for r in runs), build.row(),
                       "", f"Cache: {cache_bytes / events_total:.1f} bytes per event on disk ({cache_bytes / 2**30:.2f} GiB)."])
    print("\n" + table)
    out = {"info": info, "users": ds.num_users, "events": events_total, "shards": ds.num_shards, "batch_size": B,
           "export_batch_size": EB, "cache_bytes_per_event": cache_bytes / events_total,
           "runs": [dict(dataclasses.asdict(r), items_per_s=r.items_per_s, events_per_s=r.events_per_s,
                         events_per_cpu_s=r.events_per_cpu_s) for r in runs + [build]],
           "markdown": table}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
