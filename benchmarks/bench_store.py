"""Embedding-store lookups (paper 2.4-2.5): LMDB and Redis, p50 / p99 latency per call and lookups/s.

The store holds ``--users`` users (default 20,000) of 58 int4 rows of D = 256 (136 bytes a row, 7,888 bytes a
user: ``dv365_ops.int4_quantize`` of random embeddings), published as one version. Each case runs ``--readers``
processes (each opens the store itself, as serving processes would) that look up random stored users, 1 or
1,000 per call, for ``--seconds``, with the records only (``store.get``: read, checksum, copy) or dequantized
too (``store.lookup``: + ``dv365_ops.int4_dequantize`` to float32 [n, 58, 256]). The peer, on the same ids:
``memory``, a numpy gather from an in-process array of every record (no store, no checksum): the floor a store
adds its cost to. Latency is per call in each process; lookups/s is users served per second by all readers.

Redis: a ``redis-server`` started on a free port (``--save '' --appendonly no``) unless ``--redis-url`` is given.

    python benchmarks/bench_store.py [--users 20000 --seconds 2 --readers 1,4 --batch 1,1000]
        [--json benchmarks/results/store-cpu.json --md benchmarks/results/store-cpu.md]

On a GPU machine ``--device cuda`` dequantizes there (records copied to the device first).
``pytest benchmarks/bench_store.py --benchmark-only`` times a small LMDB get for ``make bench``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import environment  # noqa: E402

TOKENS, DIM, ROW = 58, 256, 136


@dataclasses.dataclass(frozen=True)
class Case:
    backend: str  # lmdb | redis | memory
    batch: int
    readers: int
    dequantize: bool


def user_ids(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 7919 + 13  # sparse, not 0..n-1


def build(url: str, n: int, part_users: int = 2000, seed: int = 0) -> float:
    """Writes and publishes version ``v1`` of ``n`` users in parts; returns the seconds it took."""
    import torch

    import dv365_ops
    from dv365.store import open_store

    ids = user_ids(n)
    gen = torch.Generator().manual_seed(seed)
    store = open_store(url, create=True)
    t0 = time.perf_counter()
    w = store.stage("v1")
    infos = []
    for p, s in enumerate(range(0, n, part_users)):
        chunk = ids[s:s + part_users]
        x = torch.randn(len(chunk) * TOKENS, DIM, generator=gen)
        infos.append(w.write_part(p, chunk, dv365_ops.int4_quantize(x).view(len(chunk), TOKENS, ROW)))
    store.publish("v1", {"num_tokens": TOKENS, "dim": DIM, "half_scale_bias": False}, infos)
    dt = time.perf_counter() - t0
    store.close()
    return dt


def memory_table(url: str, n: int):
    """Every record in one array, sorted by user id: the in-process peer."""
    from dv365.store import open_store

    ids = user_ids(n)
    store = open_store(url, readonly=True)
    recs = np.concatenate([store.get(ids[s:s + 2000]).records.numpy() for s in range(0, n, 2000)])
    store.close()
    return ids, recs


def _reader(rank: int, urls: dict, n: int, tasks, results, device: str) -> None:
    import torch

    import dv365_ops
    from dv365.store import open_store

    torch.set_num_threads(1)  # readers share the machine's cores
    stores = {b: open_store(u, readonly=True) for b, u in urls.items()}
    mem_ids, mem_recs = memory_table(urls["lmdb"], n) if "lmdb" in urls else (None, None)
    results.put(("ready", rank))
    ids = user_ids(n)
    rng = np.random.default_rng(1000 + rank)
    while True:
        task = tasks.get()
        if task is None:
            break
        case, seconds, start_at = task
        while time.time() < start_at:
            time.sleep(0.001)
        lat = []
        served = 0
        t_start = time.perf_counter()
        t_end = t_start + seconds
        while True:
            ask = ids[rng.integers(0, n, size=case.batch)]
            t0 = time.perf_counter()
            if case.backend == "memory":
                out = torch.from_numpy(mem_recs[np.searchsorted(mem_ids, ask)])
                if case.dequantize:
                    packed = out.to(device).reshape(-1, ROW)
                    out = dv365_ops.int4_dequantize(packed).view(len(ask), TOKENS, DIM)
            elif case.dequantize:
                out = stores[case.backend].lookup(ask, device=device).embeddings
            else:
                out = stores[case.backend].get(ask).records
            if case.dequantize and device != "cpu":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            lat.append(t1 - t0)
            served += out.shape[0]
            if t1 >= t_end:
                break
        results.put(("done", rank, lat, served, time.perf_counter() - t_start))
    for s in stores.values():
        s.close()


class RedisServer:
    def __init__(self, workdir: str):
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", workdir, "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def version(self) -> str:
        out = subprocess.run([shutil.which("redis-server"), "--version"], capture_output=True, text=True).stdout
        return out.split()[2].removeprefix("v=") if out else "?"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=2.0, help="per case")
    ap.add_argument("--readers", default="1,4")
    ap.add_argument("--batch", default="1,1000")
    ap.add_argument("--backends", default="lmdb,redis")
    ap.add_argument("--redis-url", default=None, help="an existing server (default: start one)")
    ap.add_argument("--device", default="cpu", help="where lookup dequantizes (cuda on a GPU machine)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--md", default=None, help="write the markdown report here")
    args = ap.parse_args(argv)
    backends = args.backends.split(",")
    readers = [int(r) for r in args.readers.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    work = tempfile.mkdtemp(prefix="dv365-bench-store-")
    server = None
    urls: dict[str, str] = {}
    try:
        import lmdb
        import redis

        if "lmdb" in backends:
            urls["lmdb"] = os.path.join(work, "lmdb")
        if "redis" in backends:
            if args.redis_url:
                urls["redis"] = args.redis_url
            else:
                server = RedisServer(work)
                urls["redis"] = f"redis://127.0.0.1:{server.port}/0?prefix=bench{os.getpid()}"
        load = os.getloadavg()[0]  # others' work on a shared machine shows in every number
        build_s = {}
        for b, u in urls.items():
            build_s[b] = build(u, args.users)
            print(f"built {b}: {args.users} users in {build_s[b]:.1f} s", file=sys.stderr)
        ctx = mp.get_context("spawn")
        tasks = [ctx.Queue() for _ in range(max(readers))]
        results = ctx.Queue()
        procs = [ctx.Process(target=_reader, args=(r, urls, args.users, tasks[r], results, args.device), daemon=True)
                 for r in range(max(readers))]
        for p in procs:
            p.start()
        for _ in procs:
            msg = results.get(timeout=300)
            assert msg[0] == "ready", msg
        # the providers of one configuration back to back, so that drifting load on a shared machine skews
        # their ratio as little as possible
        cases = [Case(b, batch, r, dq) for batch in batches for r in readers for dq in (False, True)
                 for b in (["memory"] if "lmdb" in urls else []) + list(urls)]
        rows = []
        from tqdm import tqdm

        for case in tqdm(cases, desc="cases", file=sys.stderr):
            start_at = time.time() + 0.2
            for r in range(case.readers):
                tasks[r].put((case, args.seconds, start_at))
            lat, served, elapsed = [], 0, 0.0
            for _ in range(case.readers):
                _, _, l, s, t = results.get(timeout=args.seconds * 20 + 120)
                lat += l
                served += s
                elapsed = max(elapsed, t)  # the readers start together; the last call may run past --seconds
            rows.append({"backend": case.backend, "users_per_call": case.batch, "readers": case.readers,
                         "dequantize": case.dequantize, "calls": len(lat), "p50_ms": pct(lat, 50) * 1e3,
                         "p99_ms": pct(lat, 99) * 1e3, "lookups_per_s": served / elapsed})
        for t in tasks:
            t.put(None)
        for p in procs:
            p.join(timeout=30)
        import dv365

        env = environment()
        versions = (f"py-lmdb {lmdb.__version__} (LMDB {'.'.join(map(str, lmdb.version()[:3]))}), redis-py "
                    f"{redis.__version__}, redis-server {server.version() if server else 'external'}, "
                    f"dv365 {dv365.__version__}")
        table = render(rows)
        head = (f"# Embedding store lookups ({args.device})\n\n{env}; {os.cpu_count()} CPU cores (1-minute load "
                f"average {load:.1f} when the run began); {versions}.\n\n"
                f"Store: {args.users:,} users x {TOKENS} int4 rows of D = {DIM} ({ROW} B a row, "
                f"{TOKENS * ROW:,} B a user, {args.users * TOKENS * ROW / 1e6:.0f} MB), one version; built in "
                + ", ".join(f"{b} {s:.1f} s" for b, s in build_s.items())
                + f". Each case: {args.seconds:g} s; readers are processes, each with 1 torch thread; ids are "
                "random stored users. `memory` is the in-process numpy gather, no store.\n\n")
        print(head + table)
        if args.md:
            pathlib.Path(args.md).write_text(head + table + "\n")
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps({
                "environment": env, "versions": versions, "cpu_cores": os.cpu_count(), "users": args.users,
                "record_bytes": TOKENS * ROW, "load_average_at_start": load, "seconds_per_case": args.seconds,
                "device": args.device, "build_seconds": build_s, "rows": rows}, indent=1) + "\n")
    finally:
        if server:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def render(rows: list[dict]) -> str:
    floor = {(r["users_per_call"], r["readers"], r["dequantize"]): r["lookups_per_s"]
             for r in rows if r["backend"] == "memory"}
    lines = ["| backend | users / call | readers | dequantize | calls | p50 (ms) | p99 (ms) | lookups/s "
             "| memory / this |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        f = floor.get((r["users_per_call"], r["readers"], r["dequantize"]))
        ratio = f"{f / r['lookups_per_s']:.2f}x" if f and r["backend"] != "memory" else ""
        lines.append(f"| {r['backend']} | {r['users_per_call']:,} | {r['readers']} | "
                     f"{'yes' if r['dequantize'] else 'no'} | {r['calls']:,} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['lookups_per_s']:,.0f} | {ratio} |")
    return "\n".join(lines)


@pytest.mark.parametrize("batch", [1, 1000])
def test_lmdb_get(benchmark, tmp_path, batch):
    from dv365.store import open_store

    url = str(tmp_path / "s")
    build(url, 2000)
    store = open_store(url, readonly=True)
    ask = user_ids(2000)[np.random.default_rng(0).integers(0, 2000, size=batch)]
    assert bool(store.get(ask).found.all())
    benchmark.pedantic(store.get, args=(ask,), rounds=20, warmup_rounds=2)
    store.close()


if __name__ == "__main__":
    sys.exit(main())
