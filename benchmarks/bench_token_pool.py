"""token_pool (forward, forward + backward) against plain-torch peers on the FSA's shapes (paper 2.3.2).

Peers, on the same input:
- ``avg_pool1d``: ``F.avg_pool1d(x, stride, stride, ceil_mode=True)``. With no padding its last, partial
  window divides by the elements it covers, exactly like ``token_pool`` (checked below, also for N not
  divisible by the stride); it only takes 2-D/3-D inputs with N >= 1.
- ``reshape_mean``: ``x.reshape(..., N / stride, stride).mean(-1)`` on the ``[B, D, N]`` view; only for N
  divisible by the stride (reshaping the FSA's transposed view copies it first).
- ``token_mean``: what one writes on the FSA's ``[B, N, D]`` activations, ``y.reshape(B, N / s, s, D).mean(2)``
  (N divisible by the stride), for the token-major layout.
- ``reference``: ``dv365_ops.reference.token_pool`` (pad, reshape, sum, divide by the window counts).

``layout``: ``BDN`` a contiguous ``[B, D, N]`` tensor; ``BND.T`` the FSA's ``[B, N, D]`` activations
seen as ``[B, D, N]`` (``transpose(1, 2)``), where ``token_pool`` reads and writes without copying.

Run ``python benchmarks/bench_token_pool.py`` for a markdown table (``--quick`` for smaller sizes), or
``pytest benchmarks/bench_token_pool.py --benchmark-only``.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import itertools
import sys
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

import dv365_ops
from dv365_ops import reference as R

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import best_seconds  # noqa: E402

TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-2, 1.6e-2)}


@dataclasses.dataclass(frozen=True)
class Case:
    b: int
    d: int
    n: int
    stride: int
    dtype: torch.dtype
    layout: str  # "BDN" or "BND.T"

    @property
    def name(self) -> str:
        return f"[{self.b},{self.d},{self.n}]/{self.stride} {str(self.dtype).removeprefix('torch.')} {self.layout}"

    def make(self) -> torch.Tensor:
        if self.layout == "BDN":
            return torch.randn(self.b, self.d, self.n, dtype=self.dtype)
        return torch.randn(self.b, self.n, self.d, dtype=self.dtype).transpose(1, 2)

    def floor_bytes(self, backward: bool) -> int:
        """Each input read once, each output written once (forward; plus grad in, grad_x out)."""
        n_out = -(-self.n // self.stride)
        es = torch.empty((), dtype=self.dtype).element_size()
        fwd = self.b * self.d * (self.n + n_out) * es
        return 2 * fwd if backward else fwd


def _token_mean(x: torch.Tensor, s: int) -> torch.Tensor:
    y = x.transpose(1, 2)  # back to [B, N, D]: a view for the BND.T layout
    b, n, d = y.shape
    return y.reshape(b, n // s, s, d).mean(2).transpose(1, 2)


def providers(case: Case) -> dict[str, Callable[[torch.Tensor, int], torch.Tensor]]:
    p = {
        "dv365": dv365_ops.token_pool,
        "avg_pool1d": lambda x, s: F.avg_pool1d(x, s, s, ceil_mode=True),
        "reference": R.token_pool,
    }
    if case.n % case.stride == 0:
        p["reshape_mean"] = lambda x, s: x.reshape(*x.shape[:-1], x.shape[-1] // s, s).mean(-1)
        if case.layout == "BND.T":
            p["token_mean"] = _token_mean
    return p


def check(case: Case) -> None:
    """Every provider's forward and gradient agree with the reference before anything is timed."""
    x = case.make()
    atol, rtol = TOL[case.dtype]
    expected = R.token_pool(x.float(), case.stride)
    grad = torch.randn_like(expected)
    xr = x.float().requires_grad_()
    R.token_pool(xr, case.stride).backward(grad)
    for name, fn in providers(case).items():
        xi = x.detach().requires_grad_()
        out = fn(xi, case.stride)
        torch.testing.assert_close(out.float(), expected, atol=atol, rtol=rtol, msg=f"{name} forward")
        out.backward(grad.to(case.dtype))
        torch.testing.assert_close(xi.grad.float(), xr.grad, atol=atol, rtol=rtol, msg=f"{name} backward")


def step(fn, x: torch.Tensor, stride: int, backward: bool) -> Callable[[], None]:
    if not backward:
        return lambda: fn(x, stride)
    xg = x.detach().requires_grad_()
    grad = torch.randn_like(fn(xg.detach(), stride))

    def run() -> None:
        xg.grad = None
        fn(xg, stride).backward(grad)

    return run


def cases(quick: bool) -> list[Case]:
    b = 32 if quick else 256
    shapes = [(b, 256, 200, 2), (b, 256, 100, 2), (b, 256, 199, 2)]
    return [
        Case(bb, d, n, s, dt, lay)
        for (bb, d, n, s), dt, lay in itertools.product(shapes, [torch.float32, torch.bfloat16], ["BDN", "BND.T"])
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="B = 32 instead of 256")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| case | pass | provider | ms | GB/s | best peer / dv365 |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for case in cases(args.quick):
        check(case)
        x = case.make()
        for backward in (False, True):
            times = {
                name: best_seconds(step(fn, x, case.stride, backward), args.repeats)
                for name, fn in providers(case).items()
            }
            best_peer = min(t for name, t in times.items() if name != "dv365")
            for name, t in times.items():
                ratio = f"{best_peer / t:.2f}x" if name == "dv365" else ""
                gbs = case.floor_bytes(backward) / t / 1e9
                print(f"| {case.name} | {'fwd+bwd' if backward else 'fwd'} | {name} | {t * 1e3:.2f} | {gbs:.1f} | {ratio} |")
        sys.stdout.flush()


_PYTEST_CASES = [c for c in cases(quick=True) if c.layout == "BND.T" or c.dtype == torch.float32]


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", _PYTEST_CASES, ids=lambda c: c.name.replace(" ", "-").replace("/", "-stride"))
@pytest.mark.parametrize("provider", ["dv365", "avg_pool1d", "reshape_mean", "token_mean", "reference"])
def test_token_pool(benchmark, provider, case, backward):
    fns = providers(case)
    if provider not in fns:
        pytest.skip(f"{provider} does not apply to {case.name}")
    check(case)
    run = step(fns[provider], case.make(), case.stride, backward)
    benchmark.extra_info["floor_bytes"] = case.floor_bytes(backward)
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)


if __name__ == "__main__":
    main()
