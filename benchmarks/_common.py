"""Shared benchmark helpers: a result row, a median timer, and the markdown table every bench prints."""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
import platform
import subprocess
import time
from collections.abc import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Result:
    case: str  # workload and pass, e.g. "long fp32 fwd"
    provider: str  # "dv365" or the peer's name
    seconds: float  # median per call
    bytes_floor: int  # each input read once + each output written once

    @property
    def gbps(self) -> float:
        return self.bytes_floor / self.seconds / 1e9


def median_time(fn: Callable[[], object], min_time: float = 0.3, max_reps: int = 50) -> float:
    """Median seconds per call after one warm-up call, over at least 3 calls or ``min_time`` seconds."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < 3 or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` runs after a warm-up: on a shared machine the minimum is the stable statistic."""
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def markdown_table(results: Sequence[Result], ours: str = "dv365") -> str:
    """One row per (case, provider); ``vs best peer`` is the best peer's time over this row's time."""
    best_peer: dict[str, float] = {}
    for r in results:
        if r.provider != ours:
            best_peer[r.case] = min(best_peer.get(r.case, float("inf")), r.seconds)
    lines = ["| case | provider | time (ms) | GB/s | vs best peer |", "| --- | --- | ---: | ---: | ---: |"]
    for r in results:
        ratio = f"{best_peer[r.case] / r.seconds:.2f}x" if r.case in best_peer else "-"
        lines.append(f"| {r.case} | {r.provider} | {r.seconds * 1e3:.3f} | {r.gbps:.1f} | {ratio} |")
    return "\n".join(lines)


def environment() -> str:
    """Date, CPU, thread count, torch version and commit, for the head of a results file."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=pathlib.Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{date}, {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, commit {commit}"
