"""Jagged weighted mean pooling (docs/design.md#ops-contract) against ``F.embedding_bag`` on the same inputs.

Peers: ``embedding_bag(mode="sum", per_sample_weights=w)`` divided by the per-bag weight sum (weighted), and
``embedding_bag(mode="mean")`` (unweighted); backward through autograd, dense and ``sparse=True``.
Workloads (W40K-cpu-like, R = 1,000,000 rows, D = 64): ``long`` = 4 bags of 10,000-70,000 events,
``short`` = 4096 bags of 1-50 events.

Run ``python benchmarks/bench_jagged.py`` for a markdown table, or
``pytest benchmarks/bench_jagged.py --benchmark-only`` for pytest-benchmark.
"""

from __future__ import annotations

import functools
import pathlib
import sys
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

import dv365_ops
from dv365_ops.jagged import jagged_mean_pool

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from _common import Result, environment, markdown_table, median_time  # noqa: E402
from tolerances import assert_close  # noqa: E402

NUM_ROWS = 1_000_000
DIM = 64
WORKLOADS = {"long": (4, 10_000, 70_000), "short": (4096, 1, 50)}  # bags, min length, max length
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PASSES = ("fwd", "fwd-unweighted", "bwd-dense", "bwd-sparse")


@functools.cache
def _table(dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(NUM_ROWS, DIM).to(dtype)


@functools.cache
def _jagged(workload: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    bags, lo, hi = WORKLOADS[workload]
    lengths = torch.randint(lo, hi + 1, (bags,))
    offsets = torch.zeros(bags + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    ids = torch.randint(0, NUM_ROWS, (int(offsets[-1]),))
    weights = torch.rand(ids.numel())
    return ids, offsets, weights


def _embedding_bag_mean(table, ids, offsets, weights, sparse=False):
    if weights is None:
        return F.embedding_bag(ids, table, offsets, mode="mean", include_last_offset=True, sparse=sparse)
    pooled = F.embedding_bag(ids, table, offsets, mode="sum", per_sample_weights=weights,
                             include_last_offset=True, sparse=sparse)
    den = torch.segment_reduce(weights.float(), "sum", offsets=offsets, unsafe=True)
    # a zero-sum bag pooled to 0 stays 0
    return pooled / den.clamp_min(torch.finfo(torch.float32).tiny).to(pooled.dtype)[:, None]


def _dv365(table, ids, offsets, weights, sparse=False):
    return jagged_mean_pool(table, ids, offsets, weights, sparse=sparse)


def _backward_timer(pool: Callable, table, ids, offsets, weights, sparse: bool):
    leaf = table.detach().requires_grad_()
    out = pool(leaf, ids, offsets, weights, sparse)
    grad = torch.ones_like(out)
    return lambda: torch.autograd.grad(out, leaf, grad, retain_graph=True)[0]


def _grad_dense(grad: torch.Tensor) -> torch.Tensor:
    return grad.coalesce().to_dense() if grad.layout == torch.sparse_coo else grad


def case_runs(workload: str, dname: str, pass_: str) -> list[tuple[str, str, Callable[[], object], int]]:
    """(case, provider, timed call, bytes floor) for dv365 and its peer, after checking the peer's result
    against ours."""
    ids, offsets, weights = _jagged(workload)
    n, m = ids.numel(), offsets.numel() - 1
    dtype = DTYPES[dname]
    table = _table(dtype)
    elt = table.element_size()
    case = f"{workload} {dname} {pass_}"
    w = None if pass_ == "fwd-unweighted" else weights
    wp = None if w is None else weights.to(dtype)  # embedding_bag wants per_sample_weights in the table's dtype
    index_bytes = n * 8 + (m + 1) * 8 + (0 if w is None else n * 4)
    if pass_.startswith("fwd"):
        # gathered rows + ids/offsets/weights in, pooled bags out
        floor = n * DIM * elt + index_bytes + m * DIM * elt
        ours = functools.partial(_dv365, table, ids, offsets, w)
        peer = functools.partial(_embedding_bag_mean, table, ids, offsets, wp)
        assert_close(ours(), peer().to(dtype), dtype)
        peer_name = "embedding_bag mean" if w is None else "embedding_bag sum / Σw"
    else:
        # grad in, dense [R, D] table gradient (or one row + one index per event) out
        sparse = pass_ == "bwd-sparse"
        floor = m * DIM * elt + index_bytes + (n * (DIM * elt + 8) if sparse else NUM_ROWS * DIM * elt)
        ours = _backward_timer(_dv365, table, ids, offsets, w, sparse)
        peer = _backward_timer(_embedding_bag_mean, table, ids, offsets, wp, sparse)
        assert_close(_grad_dense(ours()), _grad_dense(peer()).to(dtype), dtype)
        peer_name = "embedding_bag sum / Σw" + (" sparse" if sparse else "")
    return [(case, "dv365", ours, floor), (case, peer_name, peer, floor)]


def cases() -> Iterator[tuple[str, str, Callable[[], object], int]]:
    for workload in WORKLOADS:
        for dname in DTYPES:
            for pass_ in PASSES:
                yield from case_runs(workload, dname, pass_)


@pytest.mark.parametrize("provider", [0, 1], ids=["dv365", "peer"])
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("dname", DTYPES)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_jagged_mean_pool(benchmark, workload, dname, pass_, provider):
    case, name, fn, floor = case_runs(workload, dname, pass_)[provider]
    benchmark.group = case
    benchmark.extra_info.update(provider=name, bytes_floor=floor)
    benchmark(fn)


def main() -> None:
    print(f"{environment()}, dv365 {dv365_ops.__version__}; R = {NUM_ROWS:,}, D = {DIM}\n")
    results = [Result(case, provider, median_time(fn), floor) for case, provider, fn, floor in cases()]
    print(markdown_table(results))


if __name__ == "__main__":
    main()
