"""The seven user towers of paper table 1 on the same pooled tokens: parameters, forward and forward + backward time.

Paper 3.4 chose FSA over the token-wise vanilla transformer (``T-L_t``) for "fewer parameters and a 10% training
QPS advantage" at equal NE; this measures both for dv365's towers. Every tower maps ``[B, N, D]`` pooled tokens to
58 tokens (``pass_thru`` keeps N; FSA: the funnel 193 -> 97 -> 49 plus 9 LCE tokens).

    python benchmarks/bench_towers.py                       # CUDA if present, else CPU; markdown table
    python benchmarks/bench_towers.py --json out.json       # also the rows as JSON
    python benchmarks/bench_towers.py --bf16 --compile      # bf16 autocast (CUDA) / torch.compile each tower
    python benchmarks/bench_towers.py --quick               # small sizes (B=4, D=32), for a smoke run
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

import dv365_ops  # noqa: F401  (registers token_pool)
from dv365.models import TOWERS, build_tower

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import best_seconds, environment  # noqa: E402


def tower_args(name: str, num_out: int) -> dict:
    if name == "pass_thru":
        return {}
    return {"num_out": num_out}


def measure(name: str, b: int, n: int, d: int, num_out: int, device: torch.device, bf16: bool, compile_: bool,
            repeats: int) -> dict:
    tower = build_tower(name, n, d, **tower_args(name, num_out)).to(device)
    fn = torch.compile(tower, fullgraph=True) if compile_ else tower
    x = torch.randn(b, n, d, device=device, requires_grad=True)
    grad = torch.randn(b, tower.num_out, d, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def forward():
        with torch.no_grad(), autocast:
            fn(x)
        sync()

    def step():
        with autocast:
            out = fn(x)
        out.backward(grad.to(out.dtype))
        sync()

    fwd, fwd_bwd = best_seconds(forward, repeats), best_seconds(step, repeats)
    return {
        "tower": name,
        "class": type(tower).__name__,
        "num_out": tower.num_out,
        "params": sum(p.numel() for p in tower.parameters()),
        "forward_ms": fwd * 1e3,
        "forward_backward_ms": fwd_bwd * 1e3,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=193, help="N, the pooled slices (193 = dv365's default spec)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--num-out", type=int, default=58)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (as the trainer does on CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile(fullgraph=True) each tower")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="B=4, D=32, 3 repeats")
    parser.add_argument("--json", type=pathlib.Path, help="write the rows and the environment here")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.dim, args.repeats = 4, 32, 3
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [
        measure(name, args.batch, args.tokens, args.dim, args.num_out, device, args.bf16, args.compile, args.repeats)
        for name in TOWERS
    ]
    env = environment() + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else "")
    setup = (f"B={args.batch}, N={args.tokens}, D={args.dim}, N_out={args.num_out}, {device.type}, "
             f"{'bf16 autocast' if args.bf16 else 'fp32'}{', compiled' if args.compile else ''}")
    ref = next(r for r in rows if r["tower"] == "T-L_t")
    print(f"{env}\n\n{setup}\n")
    print("| tower | N_out | params | fwd (ms) | fwd + bwd (ms) | fwd + bwd vs T-L_t |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = ref["forward_backward_ms"] / r["forward_backward_ms"]
        print(f"| {r['tower']} | {r['num_out']} | {r['params']:,} | {r['forward_ms']:.3f} | "
              f"{r['forward_backward_ms']:.3f} | {ratio:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "setup": setup, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
