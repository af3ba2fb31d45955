"""int4 rowwise quantize / dequantize against plain torch and fbgemm (docs/design.md#int4-rows: 58 rows of 136 bytes per user).

Peers, on the same rows:
- ``reference``: ``dv365_ops.reference.int4_quantize`` / ``int4_dequantize`` (plain torch, written for clarity).
- ``torch_tuned``: plain torch written for speed (one ``aminmax`` pass, in-place arithmetic, preallocated
  output); byte-identical to the reference.
- ``fbgemm``: ``torch.ops.fbgemm.FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf(x, 4)`` /
  ``FusedNBitRowwiseQuantizedSBHalfToFloat`` (fp16 scale and bias: compared with our ``half`` variant, whose
  bytes are identical; its dequantize uses a fused multiply-add, so it may differ by an ulp).

Run ``python benchmarks/bench_int4.py`` for a markdown table (``--users`` sets R = 58 x users), or
``pytest benchmarks/bench_int4.py --benchmark-only``.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from typing import Callable

import pytest
import torch

import dv365_ops
from dv365_ops import reference as R

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import best_seconds  # noqa: E402

try:
    import fbgemm_gpu  # noqa: F401

    HAS_FBGEMM = hasattr(torch.ops.fbgemm, "FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf")
except ImportError:
    HAS_FBGEMM = False

ROWS_PER_USER = 58


def quantize_torch_tuned(x: torch.Tensor, half_scale_bias: bool = False) -> torch.Tensor:
    assert not half_scale_bias
    r, d = x.shape
    xf = x.float()
    mn, mx = torch.aminmax(xf, dim=1)
    scale = (mx - mn) / 15
    inv = torch.where(scale > 0, scale.reciprocal(), 0.0)
    q = (xf - mn[:, None]).mul_(inv[:, None]).round_().clamp_(0, 15).to(torch.uint8)
    out = torch.empty(r, d // 2 + 8, dtype=torch.uint8)
    torch.bitwise_or(q[:, 0::2], q[:, 1::2] << 4, out=out[:, : d // 2])
    out[:, d // 2 :] = torch.stack([scale, mn], 1).view(torch.uint8)
    return out


def dequantize_torch_tuned(packed: torch.Tensor, half_scale_bias: bool = False) -> torch.Tensor:
    assert not half_scale_bias
    r, w = packed.shape
    codes = packed[:, : w - 8]
    sb = packed[:, w - 8 :].clone().view(torch.float32)
    out = torch.empty(r, 2 * (w - 8), dtype=torch.float32)
    out[:, 0::2] = codes & 0xF
    out[:, 1::2] = codes >> 4
    return out.mul_(sb[:, :1]).add_(sb[:, 1:])


@dataclasses.dataclass(frozen=True)
class Case:
    rows: int
    d: int
    dtype: torch.dtype
    half: bool

    @property
    def name(self) -> str:
        return f"[{self.rows},{self.d}] {str(self.dtype).removeprefix('torch.')} {'fp16' if self.half else 'fp32'} scale/bias"

    def width(self) -> int:
        return self.d // 2 + (4 if self.half else 8)

    def floor_bytes(self, op: str) -> int:
        values = self.rows * self.d * (torch.empty((), dtype=self.dtype).element_size() if op == "quantize" else 4)
        return values + self.rows * self.width()


def providers(case: Case, op: str) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    h = case.half
    if op == "quantize":
        p = {"dv365": lambda x: dv365_ops.int4_quantize(x, half_scale_bias=h), "reference": lambda x: R.int4_quantize(x, h)}
        if not h:
            p["torch_tuned"] = quantize_torch_tuned
        if h and HAS_FBGEMM and case.dtype in (torch.float32, torch.float16):
            p["fbgemm"] = lambda x: torch.ops.fbgemm.FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf(x, 4)
        return p
    p = {"dv365": lambda q: dv365_ops.int4_dequantize(q, half_scale_bias=h), "reference": lambda q: R.int4_dequantize(q, h)}
    if not h:
        p["torch_tuned"] = dequantize_torch_tuned
    if h and HAS_FBGEMM:
        p["fbgemm"] = lambda q: torch.ops.fbgemm.FusedNBitRowwiseQuantizedSBHalfToFloat(q, 4)
    return p


def inputs(case: Case, op: str) -> torch.Tensor:
    x = torch.randn(case.rows, case.d).to(case.dtype)
    return x if op == "quantize" else R.int4_quantize(x, case.half)


def check(case: Case, op: str) -> None:
    """Quantizers must match the reference byte for byte; dequantizers to float32 tolerance."""
    small = dataclasses.replace(case, rows=min(case.rows, 2048))
    inp = inputs(small, op)
    expected = R.int4_quantize(inp, case.half) if op == "quantize" else R.int4_dequantize(inp, case.half)
    for name, fn in providers(case, op).items():
        got = fn(inp)
        if op == "quantize":
            assert torch.equal(got, expected), f"{name} quantize bytes differ from the reference"
        else:
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=f"{name} dequantize")


def cases(users: int) -> list[Case]:
    rows = ROWS_PER_USER * users
    return [
        Case(rows, 256, torch.float32, False),
        Case(rows, 256, torch.float32, True),
        Case(rows, 256, torch.bfloat16, False),
        Case(rows, 256, torch.float16, True),
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=4096, help="R = 58 x users rows of D = 256")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fbgemm: {HAS_FBGEMM}\n")
    print("| case | op | provider | ms | GB/s | best peer / dv365 |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for case in cases(args.users):
        for op in ("quantize", "dequantize"):
            check(case, op)
            inp = inputs(case, op)
            times = {
                name: best_seconds(lambda fn=fn: fn(inp), args.repeats if name != "reference" else 2)
                for name, fn in providers(case, op).items()
            }
            best_peer = min(t for name, t in times.items() if name != "dv365")
            for name, t in times.items():
                ratio = f"{best_peer / t:.2f}x" if name == "dv365" else ""
                print(f"| {case.name} | {op} | {name} | {t * 1e3:.2f} | {case.floor_bytes(op) / t / 1e9:.1f} | {ratio} |")


@pytest.mark.parametrize("op", ["quantize", "dequantize"])
@pytest.mark.parametrize("case", cases(256), ids=lambda c: c.name.replace(" scale/bias", "-sb").replace(" ", "-"))
@pytest.mark.parametrize("provider", ["dv365", "torch_tuned", "fbgemm", "reference"])
def test_int4(benchmark, provider, case, op):
    fns = providers(case, op)
    if provider not in fns:
        pytest.skip(f"{provider} does not apply to {case.name} {op}")
    check(case, op)
    inp = inputs(case, op)
    benchmark.extra_info["floor_bytes"] = case.floor_bytes(op)
    benchmark.pedantic(fns[provider], args=(inp,), rounds=5, warmup_rounds=1)


if __name__ == "__main__":
    main()
