"""UniTi data throughput: synthetic generation (events/s), Parquet write, and the loader (examples/s) on the CPU.

Targets (issue 5): generation >= 1,000,000 events/s; the loader must outpace the model (W40K-cpu forward of
B = 4 users takes >= 80 ms, i.e. <= 50 users/s; W40K on an H200 >= 16,000 users/s per GPU).
Run ``python benchmarks/bench_data.py`` for the markdown table; ``pytest benchmarks/bench_data.py`` for
pytest-benchmark timings. Times are wall clock and process CPU time (the CI machine is shared).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
import time

import numpy as np
import pytest
import torch

from dv365.data import Loader, SynthConfig, generate, open_dataset
from dv365.timeline import EXPLICIT, IMPLICIT, TimelineBatch

USERS = int(os.environ.get("DV365_BENCH_USERS", "96"))
CONFIG = SynthConfig(users_per_shard=32)  # default W40K-like lengths: mean 40,000 events per user


@dataclasses.dataclass(frozen=True)
class Result:
    what: str
    items: int
    unit: str
    wall_s: float
    cpu_s: float

    def row(self) -> str:
        return (f"| {self.what} | {self.items:,} {self.unit} | {self.wall_s:.2f} | {self.items / self.wall_s:,.0f} | "
                f"{self.cpu_s:.2f} | {self.items / max(self.cpu_s, 1e-9):,.0f} |")


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def bench_synth(users: int = USERS) -> Result:
    gen = generate(users, seed=0, config=CONFIG)
    gen.shard(0)  # warm the allocator
    shards, wall, cpu = _timed(lambda: [gen.shard(k) for k in range(len(gen))])
    events = sum(s.explicit["ts"].size + s.implicit["ts"].size for s in shards)
    return Result("synth (generate, in memory)", events, "events", wall, cpu)


def bench_write(path: str, users: int = USERS) -> Result:
    gen = generate(users, seed=0, config=CONFIG)
    manifest, wall, cpu = _timed(lambda: gen.write(path, overwrite=True))
    c = manifest["counts"]
    return Result("synth + Parquet write (zstd, checksums)", c["explicit"] + c["implicit"], "events", wall, cpu)


def bench_loader(path: str, batch_size: int = 32, prefetch: int = 2, what: str = "") -> Result:
    """One pass over every example; the first pass over a dataset also builds its columnar cache."""
    ds = open_dataset(path)

    def run():
        rows = 0
        for b in Loader(ds, batch_size=batch_size, prefetch=prefetch):
            rows += len(b.examples)
        return rows

    rows, wall, cpu = _timed(run)
    return Result(f"loader B={batch_size}, prefetch={prefetch}, {what} (read, cut 24 h, gather)", rows, "examples",
                  wall, cpu)


def naive_batches(ds, batch_size: int = 32, gap: int = 86400):
    """Peer: what one writes with plain torch — per batch, slice each example's whole user timeline, concatenate,
    build a validated TimelineBatch and apply ``TimelineBatch.cut``."""
    for k in range(ds.num_shards):
        ex = ds.read_table(k, "examples")
        tables = {kind: ds.read_table(k, kind) for kind in (EXPLICIT, IMPLICIT)}
        starts = {kind: np.searchsorted(t["user_id"], np.arange(*ds.shard_users(k), dtype=np.int64)) for kind, t in tables.items()}
        ends = {kind: np.append(starts[kind][1:], t["user_id"].size) for kind, t in tables.items()}
        first = ds.shard_users(k)[0]
        for lo in range(0, ex["user_id"].size, batch_size):
            user, req = ex["user_id"][lo : lo + batch_size], ex["request_ts"][lo : lo + batch_size]
            out = []
            for kind, t in tables.items():
                sl = [slice(starts[kind][u - first], ends[kind][u - first]) for u in user.tolist()]
                lengths = torch.tensor([s.stop - s.start for s in sl])
                offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
                cols = {c: torch.from_numpy(np.concatenate([t[c][s] for s in sl])) for c in t if c != "user_id"}
                out.append(TimelineBatch.from_columns(kind, offsets, **cols).cut(torch.from_numpy(req - gap)))
            yield out


def bench_naive(path: str) -> Result:
    ds = open_dataset(path)
    for ours, peer in zip(Loader(ds, batch_size=32, prefetch=0), naive_batches(ds)):  # correctness first
        assert torch.equal(ours.implicit.offsets, peer[1].offsets) and torch.equal(ours.explicit.ids, peer[0].ids)
        break
    rows, wall, cpu = _timed(lambda: sum(b[0].num_users for b in naive_batches(ds)))
    return Result("peer: slice + concatenate + TimelineBatch.cut, B=32", rows, "examples", wall, cpu)


@pytest.fixture(scope="module")
def dataset_path():
    with tempfile.TemporaryDirectory() as d:
        bench_write(d, users=64)
        yield d


def test_synth_shard(benchmark):
    gen = generate(32, seed=0, config=CONFIG)
    shard = benchmark.pedantic(lambda: gen.shard(0), rounds=2, iterations=1)
    assert shard.implicit["ts"].size > 0


def test_loader(benchmark, dataset_path):
    ds = open_dataset(dataset_path)
    rows = benchmark.pedantic(lambda: sum(len(b.examples) for b in Loader(ds, batch_size=32)), rounds=2, iterations=1)
    assert rows == ds.counts["examples"]


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        results = [bench_synth(), bench_write(d), bench_loader(d, prefetch=0, what="first pass: builds the cache"),
                   bench_loader(d, prefetch=2, what="from the cache"), bench_naive(d)]
    print(f"UniTi data, {USERS} users at mean length {CONFIG.mean_length:,.0f}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, numpy {np.__version__}\n")
    print("| stage | work | wall s | per s (wall) | CPU s | per CPU s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(r.row())


if __name__ == "__main__":
    main()
