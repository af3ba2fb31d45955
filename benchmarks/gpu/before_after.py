"""W40K ``sliced_pool`` forward and backward of two builds of dv365 on the same inputs, in one GPU session.

A refactor of the ops must not slow them down; comparing numbers from different sessions (or different inputs)
cannot show that. This script runs in two steps so that each build times the same saved workload:

    python benchmarks/gpu/before_after.py save --path /tmp/w40k.pt           # once, with either build
    PYTHONPATH=<build A> python benchmarks/gpu/before_after.py time --path /tmp/w40k.pt --label before --out a.json
    PYTHONPATH=<build B> python benchmarks/gpu/before_after.py time --path /tmp/w40k.pt --label after --out b.json
    python benchmarks/gpu/before_after.py compare a.json b.json [c.json ...] --md before_after.md

``time`` calls the registered ops (``torch.ops.dv365.*``) in their original call form, so any build since the
ops were first registered can run it, and saves its pooled output so ``compare`` can check that both builds
compute the same thing. The tables are regenerated on the GPU from a seed (1.2 M rows x 256 do not belong in a
file); both builds draw the same ones.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from _common import measure  # noqa: E402

KEYS = ("ids", "offsets", "ts", "cats", "floats", "request_ts", "prog_i", "prog_f")


def save(path: str, batch: int, seed: int) -> None:
    from dv365_ops import testing

    w = testing.w40k_workload(batch=batch, dim=1, device="cpu", seed=seed)
    rows = [t.shape[0] for t in w["tables"]]
    torch.save({"inputs": {k: w[k] for k in KEYS}, "rows": rows, "batch": batch, "seed": seed}, path)
    print(f"saved {path}: B={batch}, {w['ts'].numel()} events, {w['prog_i'].shape[0]} slices, rows {rows}")


def median_ms(fn, device: str, reps: int) -> float:
    """Median milliseconds per call: the benchmarks' one timer, with CUDA events on a GPU."""
    return measure(fn, repeats=reps, min_time=0.0, warmup=min(5, reps), device_events=device == "cuda") * 1e3


def time_build(path: str, label: str, out: str, dim: int, device: str, reps: int) -> None:
    import dv365_ops  # noqa: F401  (registers torch.ops.dv365)

    saved = torch.load(path)
    x = {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device)) for k, v in saved["inputs"].items()}
    args = [x[k] for k in KEYS]
    ops = torch.ops.dv365
    result = {"label": label, "module": dv365_ops.__file__, "batch": saved["batch"], "events": x["ts"].numel(),
              "torch": torch.__version__, "reps": reps,
              "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu", "ms": {}}
    outputs = {}
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.Generator(device=device).manual_seed(saved["seed"] + 1)
        tables = [torch.randn(r, dim, generator=g, device=device).to(dtype) for r in saved["rows"]]
        name = str(dtype).split(".")[-1]
        pooled, wsum = ops.sliced_pool(tables, *args)
        outputs[name] = pooled.float().cpu()
        result["ms"][f"fwd {name}"] = median_ms(lambda: ops.sliced_pool(tables, *args), device, reps)
        grad = torch.randn(pooled.shape, generator=g, device=device).to(dtype)
        rest = args
        rows = list(saved["rows"])
        result["ms"][f"bwd dense {name}"] = median_ms(lambda: ops.sliced_pool_backward(grad, wsum, *rest, rows), device, reps)
        result["ms"][f"bwd rows {name}"] = median_ms(lambda: ops.sliced_pool_backward_rows(grad, wsum, *rest), device, reps)
        dense = ops.sliced_pool_backward(grad, wsum, *rest, rows)
        outputs[f"grad {name}"] = torch.stack([t.float().sum(0).cpu() for t in dense])
    torch.save(outputs, out + ".pt")
    pathlib.Path(out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["ms"]))


def compare(paths: list[str], md: str | None) -> None:
    runs = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    keys = list(runs[0]["ms"])
    labels = [r["label"] for r in runs]
    # repeated runs of one build are labelled <build><n> (before1, before2): the ratio compares the builds' means
    builds = list(dict.fromkeys(label.rstrip("0123456789") for label in labels))
    first, last = builds[0], builds[-1]
    lines = [f"W40K sliced_pool, B={runs[0]['batch']}, {runs[0]['events']} events, {runs[0]['gpu']}, torch "
             f"{runs[0]['torch']} (median ms of {runs[0].get('reps', 40)} calls"
             f"{', CUDA events' if runs[0]['gpu'] != 'cpu' else ''}; same inputs; runs in the order listed)", "",
             "| case | " + " | ".join(labels) + f" | {last} / {first} (means) |", "|---" * (len(labels) + 2) + "|"]
    for k in keys:
        vals = [r["ms"].get(k, float("nan")) for r in runs]
        mean = {b: statistics.mean(v for v, lab in zip(vals, labels) if lab.rstrip("0123456789") == b) for b in builds}
        lines.append(f"| {k} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {mean[last] / mean[first]:.3f} |")
    base = torch.load(paths[0] + ".pt")
    for p, label in zip(paths[1:], labels[1:]):
        other = torch.load(p + ".pt")
        for k, v in base.items():
            diff = (other[k] - v).abs().max().item()
            scale = v.abs().max().item()
            lines.append(f"\nmax |{label} - {labels[0]}| of {k}: {diff:.3g} (max |value| {scale:.3g})")
    text = "\n".join(lines)
    print(text)
    if md:
        pathlib.Path(md).write_text(text + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("--path", required=True)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("time")
    t.add_argument("--path", required=True)
    t.add_argument("--label", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--dim", type=int, default=256)
    t.add_argument("--device", default="cuda", help="cpu: a smoke test of the script (slow at W40K size: use save --batch 1)")
    t.add_argument("--reps", type=int, default=40)
    c = sub.add_parser("compare")
    c.add_argument("paths", nargs="+")
    c.add_argument("--md")
    a = p.parse_args()
    if a.cmd == "save":
        save(a.path, a.batch, a.seed)
    elif a.cmd == "time":
        time_build(a.path, a.label, a.out, a.dim, a.device, a.reps)
    else:
        compare(a.paths, a.md)


if __name__ == "__main__":
    main()
