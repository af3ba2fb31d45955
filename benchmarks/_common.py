"""Shared benchmark helpers: a result row, the one timer every bench uses, and the markdown table they print."""

from __future__ import annotations

import dataclasses
import datetime
import os
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


def _sync() -> None:
    """Wait for queued CUDA work, so that a timed call includes its kernels (a no-op without CUDA)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def measure(
    fn: Callable[[], object],
    *,
    repeats: int = 50,
    min_time: float = 0.3,
    stat: str = "median",
    slow_after: float | None = None,
    warmup: int = 1,
    device_events: bool = False,
) -> float:
    """Seconds per call of ``fn``: the one timer of the benchmarks.

    ``warmup`` untimed calls, then timed calls, CUDA-synchronized on both sides: at least 3 (at most ``repeats``)
    and until ``min_time`` seconds have passed; ``min_time=0`` times exactly ``repeats`` calls. ``stat`` is
    ``"median"``, or ``"min"`` on a shared, loaded machine, where the minimum is the stable statistic. A first
    warm-up call slower than ``slow_after`` seconds is itself the measurement (slow peers).

    ``device_events=True`` (CUDA only) times each call with CUDA events recorded on the current stream around
    it, so a kernel's time excludes the host's launch latency and the synchronization: the GPU benchmarks'
    setting, for ops of a few milliseconds and less.
    """
    if stat not in ("median", "min"):
        raise ValueError(f"measure: stat must be 'median' or 'min', got {stat!r}")
    if device_events:
        import torch

        if not torch.cuda.is_available():
            raise ValueError("measure: device_events=True needs CUDA")

        def timed() -> float:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            return a.elapsed_time(b) / 1e3
    else:

        def timed() -> float:
            t0 = time.perf_counter()
            fn()
            _sync()
            return time.perf_counter() - t0

    _sync()
    first = timed()
    if slow_after is not None and first > slow_after:
        return first
    for _ in range(warmup - 1):
        timed()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < min(3, repeats) or time.perf_counter() - start < min_time):
        times.append(timed())
    times.sort()
    return times[0] if stat == "min" else times[len(times) // 2]


def median_time(fn: Callable[[], object], min_time: float = 0.3, max_reps: int = 50) -> float:
    """:func:`measure`'s median over at least 3 calls or ``min_time`` seconds."""
    return measure(fn, repeats=max_reps, min_time=min_time)


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """:func:`measure`'s minimum over ``repeats`` calls: on a shared machine the minimum is the stable statistic."""
    return measure(run, repeats=repeats, min_time=0.0, stat="min")


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
    # DV365_COMMIT first: a copy of the tree on another machine can carry a stale .git
    commit = os.environ.get("DV365_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=pathlib.Path(__file__).parent, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{date}, {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, commit {commit}"


# results layout ------------------------------------------------------------------------------------
# benchmarks/results/: one file per GPU run, <date>_<gpu>_<commit>.md (+ .json), every run's rows appended to
# ledger.csv, and LATEST.md pointing at the newest run (the README links to LATEST.md).
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
LEDGER = RESULTS / "ledger.csv"
LEDGER_COLUMNS = ("date", "gpu", "commit", "op", "case", "provider", "ms", "gbs", "floor_ms", "vs_best_peer", "source")


def run_basename(date: str, gpu: str, commit: str) -> str:
    """``2026-12-01_h200_dcb0318``: a run's file name without suffix (date ``YYYY-MM-DD``, short commit)."""
    gpu_tag = gpu.lower().replace("nvidia", "").strip().replace(" ", "-") or "gpu"
    return f"{date[:10]}_{gpu_tag}_{commit.split()[0][:7]}"


def ledger_rows(run: dict, source: str) -> list[dict]:
    """The ledger rows of one bench_gpu.py run (``{"info": ..., "rows": [...]}``): one per (op, case, provider),
    with the best peer's time over this row's (``vs_best_peer``, empty for peers and where no peer ran)."""
    info = run["info"]
    best: dict[tuple[str, str], float] = {}
    for r in run["rows"]:
        if r.get("peer"):
            key = (r["group"], r["case"])
            best[key] = min(best.get(key, float("inf")), r["ms"])
    out = []
    for r in run["rows"]:
        peer_ms = best.get((r["group"], r["case"]))
        out.append({
            "date": info["date"][:10],
            "gpu": info.get("gpu", ""),
            "commit": str(info.get("commit", "")).split()[0][:7],
            "op": r["group"],
            "case": r["case"],
            "provider": r["impl"],
            "ms": f"{r['ms']:.4f}",
            "gbs": f"{r['gbs']:.1f}" if r.get("gbs") is not None else "",
            "floor_ms": f"{r['floor_ms']:.4f}" if r.get("floor_ms") is not None else "",
            "vs_best_peer": f"{peer_ms / r['ms']:.2f}" if peer_ms and not r.get("peer") else "",
            "source": source,
        })
    return out


def append_to_ledger(json_path: pathlib.Path, ledger: pathlib.Path = LEDGER) -> int:
    """Append a run's rows to the ledger (header first if new); a run already in it (same source) is skipped, so
    re-running is harmless. Returns the number of rows added."""
    import csv
    import json

    data = json.loads(pathlib.Path(json_path).read_text())
    runs = data["runs"] if "runs" in data else [data]
    source = pathlib.Path(json_path).name
    have = set()
    if ledger.exists():
        with ledger.open(newline="") as f:
            have = {row["source"] for row in csv.DictReader(f)}
    if source in have:
        return 0
    rows = [row for run in runs for row in ledger_rows(run, source)]
    new = not ledger.exists()
    with ledger.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LEDGER_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    return len(rows)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Append GPU runs (bench_gpu.py JSON) to benchmarks/results/ledger.csv.")
    parser.add_argument("runs", nargs="+", type=pathlib.Path, help="run JSON files, e.g. results/2026-12-01_h200_dcb0318.json")
    for path in parser.parse_args().runs:
        print(f"{path.name}: {append_to_ledger(path)} rows added to {LEDGER}")
