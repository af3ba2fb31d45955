"""Fused ``sliced_pool`` against the plain-torch ways to slice and pool (docs/design.md#w40k-workload, W40K-cpu).

Every provider gets the same W40K inputs (``dv365_ops.testing.w40k_workload``) and evaluates the slice
predicates inside its timed region:

- ``peer_per_slice``: the predicates as ``[S, N]`` masks, then one ``F.embedding_bag`` per slice
- ``peer_flat_bags``: the masks flattened into one bag list per table, one weighted ``embedding_bag`` each
  (KeyedJaggedTensor / TBE style)
- ``peer_dense_weights``: dense slice weights ``W[S, N]``, per user and table ``W @ table[ids]``
- ``index_select``: only the gather of every event's row of every table (a floor for gather designs)

and the backward (dense and sparse table gradients) against autograd through ``peer_flat_bags``.
Correctness is checked before timing. Run ``python benchmarks/bench_sliced_pool.py`` for the markdown
table (``--batch``, ``--dim``, ``--repeat``); ``pytest benchmarks --benchmark-only`` for pytest-benchmark.
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import subprocess
import sys
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

import dv365_ops
from dv365_ops import program as P
from dv365_ops.testing import w40k_workload

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import measure  # noqa: E402


def _membership(w: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The slice predicates as a plain-torch user would evaluate them: one pass of vector ops per slice,
    categorical masks through 64-entry lookup tables, ratio and score shared between slices."""
    offsets, ts, cats, floats, request_ts = (w[k] for k in ("offsets", "ts", "cats", "floats", "request_ts"))
    n, b = ts.numel(), offsets.numel() - 1
    user = torch.repeat_interleave(torch.arange(b), offsets.diff(), output_size=n)
    dt = request_ts[user] - ts
    cats_l = cats.long()
    bit = torch.arange(64)
    dur, dwell = floats[P.FLOAT_DURATION].double(), floats[P.FLOAT_DWELL].double()
    # unknown fields read as NaN (program.py): photos (duration 0) have no ratio and no score
    dwell = torch.where(torch.isfinite(dwell) & (dwell >= 0), dwell, float("nan"))
    dur = torch.where(torch.isfinite(dur) & (dur > 0), dur, float("nan"))
    log1p_dwell = torch.log1p(dwell)
    ratios: dict[float, torch.Tensor] = {}
    denoms: dict[float, torch.Tensor] = {}
    s_count = w["prog_i"].shape[0]
    keep = torch.empty(s_count, n, dtype=torch.bool)
    weight = torch.ones(s_count, n)
    for s, (r, f) in enumerate(zip(w["prog_i"].tolist(), w["prog_f"].tolist())):
        k = (dt > r[P.WIN_LO]) & (dt <= r[P.WIN_HI])
        for field_col, mask_col in zip(P.CAT_FIELD, P.CAT_MASK):
            if r[field_col] >= 0:
                lut = ((torch.tensor(r[mask_col]) >> bit) & 1).bool()
                k &= lut[cats_l[r[field_col]]]
        flags = r[P.FLAGS]
        if flags & P.DWELL_FILTER:
            k &= (dwell >= f[P.DWELL_LO]) & (dwell <= f[P.DWELL_HI])
        if flags & P.RATIO_FILTER:
            beta = f[P.BETA]
            if beta not in ratios:
                ratios[beta] = dwell / dur if beta == 1.0 else dwell / dur.pow(beta)
            k &= (ratios[beta] >= f[P.RATIO_LO]) & (ratios[beta] <= f[P.RATIO_HI])
        if flags & P.WEIGHTED:
            gamma = f[P.GAMMA]
            if gamma not in denoms:
                denoms[gamma] = torch.log1p(gamma * dur)
            score = log1p_dwell / denoms[gamma]
            k &= (denoms[gamma] > 0) & (score > f[P.S0])
            weight[s] = torch.where(k, score.clamp(max=P.MAX_SCORE), 1.0).float()
        keep[s] = k
    return keep, weight, user


def _mean(sums: torch.Tensor, wsum: torch.Tensor) -> torch.Tensor:
    return torch.where(wsum[..., None] > 0, sums / wsum.clamp_min(torch.finfo(sums.dtype).tiny)[..., None], 0.0)


def peer_per_slice(w: dict) -> torch.Tensor:
    keep, weight, user = _membership(w)
    b, s_count = w["offsets"].numel() - 1, keep.shape[0]
    out = []
    for s in range(s_count):
        t = int(w["prog_i"][s, P.TABLE])
        ev = keep[s].nonzero()[:, 0]
        counts = torch.bincount(user[ev], minlength=b)
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        ws = weight[s, ev]
        sums = F.embedding_bag(w["ids"][t][ev], w["tables"][t], offsets, mode="sum", per_sample_weights=ws, include_last_offset=True)
        wsum = torch.zeros(b).index_add_(0, user[ev], ws)
        out.append(_mean(sums, wsum))
    return torch.stack(out, 1)


def peer_flat_bags(w: dict, tables: list[torch.Tensor] | None = None, sparse: bool = False) -> torch.Tensor:
    tables = w["tables"] if tables is None else tables
    keep, weight, user = _membership(w)
    b, s_count, d = w["offsets"].numel() - 1, keep.shape[0], tables[0].shape[1]
    out = tables[0].new_zeros(s_count, b, d)
    for t, table in enumerate(tables):
        sel = (w["prog_i"][:, P.TABLE] == t).nonzero()[:, 0]
        if sel.numel() == 0:
            continue
        si, ev = keep[sel].nonzero(as_tuple=True)  # slice-major, then user, then timeline order
        bag = si * b + user[ev]
        ws = weight[sel][si, ev]
        counts = torch.bincount(bag, minlength=sel.numel() * b)
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        sums = F.embedding_bag(w["ids"][t][ev], table, offsets, mode="sum", per_sample_weights=ws, sparse=sparse, include_last_offset=True)
        wsum = torch.zeros(sel.numel() * b).index_add_(0, bag, ws)
        out = out.index_copy(0, sel, _mean(sums, wsum).view(sel.numel(), b, d))
    return out.transpose(0, 1)


def peer_dense_weights(w: dict) -> torch.Tensor:
    keep, weight, user = _membership(w)
    b, s_count, d = w["offsets"].numel() - 1, keep.shape[0], w["tables"][0].shape[1]
    dense = torch.where(keep, weight, 0.0)  # W [S, N]
    wsum = torch.zeros(b, s_count).index_add_(0, user, dense.t())
    sums = torch.zeros(b, s_count, d)
    starts = w["offsets"].tolist()
    for t, (table, ids) in enumerate(zip(w["tables"], w["ids"])):
        sel = (w["prog_i"][:, P.TABLE] == t).nonzero()[:, 0]
        dense_t = dense[sel]
        for u in range(b):
            lo, hi = starts[u], starts[u + 1]
            sums[u, sel] = dense_t[:, lo:hi] @ table.index_select(0, ids[lo:hi])
    return _mean(sums, wsum)


def index_select_only(w: dict) -> list[torch.Tensor]:
    return [table.index_select(0, ids) for table, ids in zip(w["tables"], w["ids"])]


def fused(w: dict) -> torch.Tensor:
    return dv365_ops.sliced_pool(**w)[0]


FORWARD = {
    "fused sliced_pool": fused,
    "peer: embedding_bag per slice": peer_per_slice,
    "peer: flat bags, one embedding_bag per table": peer_flat_bags,
    "peer: dense weights W @ table[ids]": peer_dense_weights,
    "index_select only": index_select_only,
}
PEERS = [name for name in FORWARD if name.startswith("peer")]


def forward_bytes(w: dict) -> int:
    """Bytes floor: every event's row of every table, ids and fields read once, outputs written once."""
    n = w["ts"].numel()
    d, esize = w["tables"][0].shape[1], w["tables"][0].element_size()
    rows = sum(n * d * esize for _ in w["tables"])
    fields = sum(i.numel() * 8 for i in w["ids"]) + n * 8 + w["cats"].numel() * w["cats"].element_size()
    fields += w["floats"].numel() * 4
    b, s = w["offsets"].numel() - 1, w["prog_i"].shape[0]
    return rows + fields + b * s * (d * esize + 4)


def _backward_fused(w: dict, sparse: bool):
    tables = [t.detach().requires_grad_() for t in w["tables"]]
    out = dv365_ops.sliced_pool(**dict(w, tables=tables), sparse=sparse)[0]
    return out, tables


def _backward_peer(w: dict, sparse: bool):
    tables = [t.detach().requires_grad_() for t in w["tables"]]
    return peer_flat_bags(w, tables, sparse=sparse), tables


def time_it(fn, repeat: int) -> float:
    # slow peers: a warm-up over 2 s is the measurement
    return measure(fn, repeats=repeat, min_time=0.0, slow_after=2.0)


def check(w: dict) -> None:
    got = fused(w)
    for name in PEERS:
        torch.testing.assert_close(FORWARD[name](w), got, atol=1e-4, rtol=1e-4, msg=name)


def run(batch: int, dim: int, repeat: int, with_per_slice: bool = True, with_dense: bool = True) -> list[dict]:
    w = w40k_workload(batch=batch, dim=dim)
    check(w)
    rows = []
    nbytes = forward_bytes(w)
    for name, fn in FORWARD.items():
        if (name == "peer: embedding_bag per slice" and not with_per_slice) or (
            name == "peer: dense weights W @ table[ids]" and not with_dense
        ):
            continue
        reps = repeat if name.startswith(("fused", "index")) else max(1, repeat // 3)
        rows.append(dict(name=name, kind="forward", seconds=time_it(lambda: fn(w), reps), bytes=nbytes))
    grad = torch.randn(batch, w["prog_i"].shape[0], dim)
    for sparse in (False, True):
        label = "sparse" if sparse else "dense"
        out, tables = _backward_fused(w, sparse)
        ref_out, ref_tables = _backward_peer(w, sparse)
        g1 = torch.autograd.grad(out, tables, grad)
        g2 = torch.autograd.grad(ref_out, ref_tables, grad)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a.to_dense() if sparse else a, b.to_dense() if sparse else b, atol=1e-4, rtol=1e-4)
        for name, make in ((f"fused backward ({label})", _backward_fused), (f"peer: autograd through flat bags ({label})", _backward_peer)):
            def step(make=make):
                o, ts = make(w, sparse)
                torch.autograd.grad(o, ts, grad)

            rows.append(dict(name=name, kind=f"fwd+bwd {label}", seconds=time_it(step, max(1, repeat // 3)), bytes=2 * nbytes))
    return rows


def table(rows: list[dict]) -> str:
    fwd = [r for r in rows if r["kind"] == "forward"]
    best_peer = min(r["seconds"] for r in fwd if r["name"].startswith("peer"))
    gather = next(r["seconds"] for r in fwd if r["name"] == "index_select only")
    lines = [
        "| provider | pass | time (ms) | GB/s (bytes floor) | best peer / this | this / index_select |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        same_kind = [q["seconds"] for q in rows if q["kind"] == r["kind"] and q["name"].startswith("peer")]
        peer = min(same_kind) if r["kind"] != "forward" else best_peer
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['seconds'] * 1e3:.1f} | {r['bytes'] / r['seconds'] / 1e9:.2f} | "
            f"{peer / r['seconds']:.2f}x | {r['seconds'] / gather:.2f} |"
        )
    return "\n".join(lines)


def header(batch: int, dim: int) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    return (
        f"W40K-cpu (docs/design.md#w40k-workload): B={batch}, D={dim}, fp32, 3 tables (1M / 200K / 10K rows), S=200 slices; "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()} {platform.processor() or ''}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, commit {commit}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rows = run(args.batch, args.dim, args.repeat)
    print(header(args.batch, args.dim))
    print()
    print(table(rows))


# pytest-benchmark entry points: one W40K-cpu workload shared by every provider
_WORKLOAD: dict = {}


def _w40k() -> dict:
    if not _WORKLOAD:
        _WORKLOAD.update(w40k_workload(batch=4, dim=64))
        check(_WORKLOAD)
    return _WORKLOAD


def _bench(benchmark, fn, rounds: int = 3):
    w = _w40k()
    benchmark.extra_info["GB/s floor"] = None
    result = benchmark.pedantic(fn, args=(w,), rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["GB/s floor"] = forward_bytes(w) / benchmark.stats.stats.median / 1e9
    return result


def test_fused_forward(benchmark):
    _bench(benchmark, fused, rounds=5)


def test_peer_flat_bags(benchmark):
    _bench(benchmark, peer_flat_bags)


def test_peer_per_slice(benchmark):
    _bench(benchmark, peer_per_slice, rounds=1)


def test_index_select_only(benchmark):
    _bench(benchmark, index_select_only, rounds=5)


def test_fused_backward_dense(benchmark):
    w = _w40k()
    grad = torch.randn(4, w["prog_i"].shape[0], w["tables"][0].shape[1])

    def step(w):
        out, tables = _backward_fused(w, False)
        torch.autograd.grad(out, tables, grad)

    _bench(benchmark, step)


if __name__ == "__main__":
    main()
