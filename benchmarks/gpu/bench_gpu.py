"""GPU benchmark of every dv365 op (native CUDA and Triton) against plain-torch peers, on one device.

    python benchmarks/gpu/bench_gpu.py [--out DIR] [--quick]

Measures the device-to-device copy bandwidth first (bytes read + written), then each op: median time
(CUDA events, benchmarks/_common.measure), achieved GB/s over the op's bytes floor (each input read once, each output
written once), the ratio to the best plain-torch peer timed in the same run (peer time / our time, > 1 is
faster), and the ratio of our time to the floor's time at the copy bandwidth. Correctness is checked
against the reference before timing. Writes bench.json and bench.md under --out and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import traceback

import torch
import torch.nn.functional as F

import dv365_ops
from dv365_ops import reference as ref

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from _common import measure  # noqa: E402

try:
    import triton
except ImportError:  # pragma: no cover - the GPU image has Triton
    triton = None

ops = torch.ops.dv365
ROWS: list[dict] = []


def bench(fn, rep_ms: int = 200) -> float:
    """Median milliseconds of fn per call (CUDA events, the benchmarks' one timer): 25 warm-up calls, then calls
    for ``rep_ms`` milliseconds (at least 3, at most 1,000)."""
    return measure(fn, repeats=1000, min_time=rep_ms / 1e3, warmup=25, device_events=True) * 1e3


def nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def copy_bandwidth() -> float:
    x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return 2 * x.numel() / ms / 1e6  # GB/s


def record(group: str, case: str, impl: str, ms: float, floor_bytes: int, copy_gbs: float, peer: bool = False, **extra) -> dict:
    row = dict(group=group, case=case, impl=impl, ms=ms, gbs=floor_bytes / ms / 1e6, floor_bytes=floor_bytes,
               floor_ms=floor_bytes / copy_gbs / 1e6, peer=peer, **extra)
    ROWS.append(row)
    print(f"  {group:<22} {case:<34} {impl:<26} {ms:9.3f} ms  {row['gbs']:8.0f} GB/s", flush=True)
    return row


def native_and_triton(name: str):
    impls = [("dv365 cuda", getattr(ops, name))]
    tri = getattr(ops, f"{name}_triton", None)
    if tri is not None:
        impls.append(("dv365 triton", tri))
    return impls


def guarded(fn):
    def wrapper(*a, **k):
        try:
            fn(*a, **k)
        except Exception:  # one broken entry must not hide the rest of the table
            traceback.print_exc()
            ROWS.append(dict(group=fn.__name__, case="error", impl="error", ms=float("nan"), gbs=float("nan"),
                             floor_bytes=0, floor_ms=float("nan"), peer=False, error=traceback.format_exc()[-500:]))
    return wrapper


# ------------------------------------------------------------------ sliced_pool (W40K)


def w40k(batch: int, dtype: torch.dtype) -> dict:
    testing = getattr(dv365_ops, "testing", None)
    if testing is None:
        import dv365_ops.testing as testing  # noqa: F811
    return testing.w40k_workload(batch=batch, dim=256, dtype=dtype, device="cuda", seed=0)


def sliced_peers(w: dict):
    """The plain-torch / TorchRec-style ways to compute the same thing; each counts its slice predicates."""
    tables, ids = w["tables"], w["ids"]
    offsets, ts, cats, floats, req, pi, pf = (w[k] for k in ("offsets", "ts", "cats", "floats", "request_ts", "prog_i", "prog_f"))
    b = offsets.numel() - 1
    s_count = pi.shape[0]
    table_of = pi[:, 0].tolist()
    n = ts.numel()
    user = torch.repeat_interleave(torch.arange(b, device="cuda"), offsets.diff(), output_size=n)
    d = tables[0].shape[1]

    def membership():
        keep, weight = ref.slice_membership(offsets, ts, cats, floats, req, pi, pf)
        return torch.where(keep, weight, 0.0)  # [S, N]

    def per_slice_bags():
        wt = membership()
        out = torch.empty(b, s_count, d, device="cuda", dtype=tables[0].dtype)
        for s in range(s_count):
            keep = wt[s] != 0
            sel_ids = ids[table_of[s]][keep]
            counts = torch.zeros(b, dtype=torch.int64, device="cuda").index_add_(0, user[keep], torch.ones_like(sel_ids))
            offs = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
            pooled = F.embedding_bag(sel_ids, tables[table_of[s]], offs, mode="sum", per_sample_weights=wt[s][keep].to(tables[0].dtype))
            den = torch.zeros(b, device="cuda").index_add_(0, user[keep], wt[s][keep])
            out[:, s] = (pooled.float() / den.clamp_min(1e-30)[:, None]).to(out.dtype)
        return out

    def flattened_bags():
        wt = membership()
        out = torch.empty(b, s_count, d, device="cuda", dtype=tables[0].dtype)
        for t, tab in enumerate(tables):
            sel = (pi[:, 0] == t).nonzero()[:, 0]
            wsel = wt[sel]  # [S_t, N]
            keep = wsel != 0
            srow, ev = keep.nonzero(as_tuple=True)  # slice-major, then event (= user) order
            bag = srow * b + user[ev]
            counts = torch.bincount(bag, minlength=sel.numel() * b)
            offs = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
            wv = wsel[srow, ev]
            pooled = F.embedding_bag(ids[t][ev], tab, offs, mode="sum", per_sample_weights=wv.to(tab.dtype))
            den = torch.zeros(sel.numel() * b, device="cuda").index_add_(0, bag, wv)
            res = (pooled.float() / den.clamp_min(1e-30)[:, None]).view(sel.numel(), b, d)
            out[:, sel] = res.transpose(0, 1).to(out.dtype)
        return out

    starts = offsets.tolist()

    def dense_matmul():
        wt = membership().to(torch.bfloat16)
        out = torch.empty(b, s_count, d, device="cuda", dtype=torch.bfloat16)
        for t, tab in enumerate(tables):
            sel = (pi[:, 0] == t).nonzero()[:, 0]
            wsel = wt[sel]
            tb = tab.to(torch.bfloat16) if tab.dtype != torch.bfloat16 else tab
            for u in range(b):
                lo, hi = starts[u], starts[u + 1]
                out[u, sel] = wsel[:, lo:hi] @ tb.index_select(0, ids[t][lo:hi])
        return out

    def index_select_only():
        return [tab.index_select(0, i) for tab, i in zip(tables, ids)]

    return [("embedding_bag per slice", per_slice_bags, 1), ("flattened bags (KJT/TBE style)", flattened_bags, 1),
            ("dense W bf16 matmul", dense_matmul, 1), ("index_select only (floor)", index_select_only, 0)]


# The forward's knobs (DV365_SP_*, docs/tuning.md), each against the defaults in the same run. The ops read the
# knobs once per process, so each variant is timed in a child process (sp_variant) on the same seeded workload.
SP_SWEEP = {
    torch.float32: [{"KEEP": "0"}, {"ROWS": "16"}, {"ITEM": "512"}, {"ITEM": "2048"}, {"ITEM": "512", "ROWS": "16"},
                    {"GROUPS": "6"}, {"GROUPS": "11"}, {"GROUPS": "16"}],
    torch.bfloat16: [{"KEEP": "0"}, {"ROWS": "16"}, {"ITEM": "512"}, {"GROUPS": "11"}],
}


def sp_variant(knobs: dict, dtype: torch.dtype, batch: int, what: list, expected: str | None = None) -> dict:
    """Milliseconds of the native sliced_pool ops named in ``what`` ("fwd", "bwd dense", "bwd rows") on
    W40K(batch, dtype) in a fresh process whose environment sets DV365_SP_<name> = value for the knobs. With
    ``expected`` (a torch.save'd (pooled, weight_sum)) the child first checks its forward against it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DV365_SP_")}
    env.update({f"DV365_SP_{k}": v for k, v in knobs.items()})
    spec = dict(dtype=str(dtype).removeprefix("torch."), batch=batch, what=what, expected=expected)
    done = subprocess.run([sys.executable, __file__, "--sp-child", json.dumps(spec)], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"DV365_SP {knobs}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sp_child(spec: dict) -> None:
    """The child side of sp_variant: prints {what: ms} as the last line."""
    dtype = getattr(torch, spec["dtype"])
    w = w40k(spec["batch"], dtype)
    args = [w[k] for k in ("tables", "ids", "offsets", "ts", "cats", "floats", "request_ts", "prog_i", "prog_f")]
    pooled, wsum = ops.sliced_pool(*args)
    if spec["expected"]:
        e_pooled, e_wsum = torch.load(spec["expected"])
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(pooled.float(), e_pooled.float(), atol=tol, rtol=tol)
        torch.testing.assert_close(wsum, e_wsum, atol=1e-3, rtol=1e-4)
    grad = torch.randn_like(pooled)
    rest = args[1:]
    rows = [t.shape[0] for t in w["tables"]]
    fns = {"fwd": lambda: ops.sliced_pool(*args),
           "bwd dense": lambda: ops.sliced_pool_backward(grad, wsum, *rest, rows),
           "bwd rows": lambda: ops.sliced_pool_backward_rows(grad, wsum, *rest)}
    print(json.dumps({k: bench(fns[k]) for k in spec["what"]}))


def sweep_sliced_pool(args, default: dict, expected, case: str, floor: int, copy_gbs: float, b: int) -> None:
    tol = 1e-4 if expected[0].dtype == torch.float32 else 2e-2
    dtype = args[0][0].dtype
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "expected.pt")
        torch.save((expected[0].cpu(), expected[1].cpu()), path)
        times = [(knobs, sp_variant(knobs, dtype, b, ["fwd"], path)["fwd"]) for knobs in SP_SWEEP[dtype]]
    for knobs, ms in times:
        name = " ".join(f"{k}={v}" for k, v in knobs.items())
        record("sliced_pool fwd", case, f"dv365 cuda ({name})", ms, floor, copy_gbs, users_per_s=b / ms * 1e3,
               sweep=True, vs_default=ms / default["ms"])
    # where the time goes: the kernels' device time per call (torch.profiler), and a CUDA graph replay (no host
    # work, no error-flag read; like an eager call, the graph copies the program's device plan, planned on the host
    # by the warm-up call)
    kernels = kernel_times(lambda: ops.sliced_pool(*args))
    total = sum(kernels.values())
    print("  kernels per call (us): " + ", ".join(f"{k[:60]} {v * 1e3:.1f}" for k, v in kernels.items()), flush=True)
    record("sliced_pool fwd", case, "dv365 cuda: kernels only (profiler)", total, floor, copy_gbs,
           users_per_s=b / total * 1e3, kernels={k: v * 1e3 for k, v in kernels.items()})
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.sliced_pool(*args)  # warm-up on the capture stream
        with torch.cuda.graph(graph, stream=stream):
            g_out = ops.sliced_pool(*args)
    graph.replay()
    torch.testing.assert_close(g_out[0].float(), expected[0].float(), atol=tol, rtol=tol)
    ms = bench(graph.replay)
    record("sliced_pool fwd", case, "dv365 cuda: CUDA graph replay", ms, floor, copy_gbs, users_per_s=b / ms * 1e3)


def kernel_times(fn, calls: int = 10) -> dict:
    """Device milliseconds per call of each kernel / memset / memcpy fn launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        if t is None:
            t = getattr(e, "cuda_time_total", 0)
        if t and e.key:
            out[e.key] = t / calls / 1e3
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


@guarded
def bench_sliced_pool(copy_gbs: float, dtype: torch.dtype, batch: int, with_peers: bool) -> None:
    w = w40k(batch, dtype)
    args = [w[k] for k in ("tables", "ids", "offsets", "ts", "cats", "floats", "request_ts", "prog_i", "prog_f")]
    tables, ids = w["tables"], w["ids"]
    n = w["ts"].numel()
    b, s, d = batch, w["prog_i"].shape[0], tables[0].shape[1]
    esz = tables[0].element_size()
    floor = len(tables) * n * d * esz + nbytes(*ids, w["ts"], w["cats"], w["floats"], w["offsets"]) + b * s * (d * esz + 4)
    case = f"W40K B={batch} {str(dtype).split('.')[-1]}"
    expected = None
    if batch <= 8:
        expected = ref.sliced_pool(*args)
    results = {}
    for impl, op in native_and_triton("sliced_pool"):
        pooled, wsum = op(*args)
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        if expected is not None:
            torch.testing.assert_close(pooled.float(), expected[0].float(), atol=tol, rtol=tol)
        else:  # too large for the reference: the two implementations must agree
            expected = (pooled, wsum)
        torch.testing.assert_close(wsum, expected[1], atol=1e-3, rtol=1e-4)  # float32 sums of ~10^4 weights
        ms = bench(lambda: op(*args))
        results[impl] = record("sliced_pool fwd", case, impl, ms, floor, copy_gbs, users_per_s=b / ms * 1e3)
    if batch == 32:
        sweep_sliced_pool(args, results["dv365 cuda"], expected, case, floor, copy_gbs, b)
    pooled, wsum = ops.sliced_pool(*args)
    grad = torch.randn_like(pooled)
    rest = args[1:]
    rows = [t.shape[0] for t in tables]
    for impl, name in (("dv365 cuda", "sliced_pool_backward"), ("dv365 triton", "sliced_pool_backward_triton")):
        op = getattr(ops, name, None)
        if op is None:
            continue
        ms = bench(lambda: op(grad, wsum, *rest, rows))
        bwd_floor = nbytes(grad) + len(tables) * n * d * 4 + sum(r * d * esz for r in rows)
        record("sliced_pool bwd dense", case, impl, ms, bwd_floor, copy_gbs,
               bwd_over_fwd=ms / results.get(impl, results["dv365 cuda"])["ms"])
        if impl == "dv365 cuda" and batch == 32 and dtype == torch.float32:
            # the backward's default is one block per table, the keep pass and each batch sorted by row; 11-group
            # blocks, the predicates evaluated in the pooling kernel, and no sort, for comparison
            for knobs in ({"GROUPS": "11"}, {"KEEP": "0"}, {"SORT": "0"}):
                times = sp_variant(knobs, dtype, batch, ["bwd dense", "bwd rows"])
                for variant in ("dense", "rows"):
                    ms = times[f"bwd {variant}"]
                    name = " ".join(f"DV365_SP_{k}={v}" for k, v in knobs.items())
                    record(f"sliced_pool bwd {variant}", case, f"dv365 cuda ({name})", ms, bwd_floor, copy_gbs,
                           bwd_over_fwd=ms / results["dv365 cuda"]["ms"], sweep=True)
    for impl, name in (("dv365 cuda", "sliced_pool_backward_rows"), ("dv365 triton", "sliced_pool_backward_rows_triton")):
        op = getattr(ops, name, None)
        if op is None:
            continue
        ms = bench(lambda: op(grad, wsum, *rest))
        record("sliced_pool bwd rows", case, impl, ms, nbytes(grad) + len(tables) * n * d * esz, copy_gbs,
               bwd_over_fwd=ms / results.get(impl, results["dv365 cuda"])["ms"])
    if with_peers:
        for name, fn, is_peer in sliced_peers(w):
            ms = bench(fn, rep_ms=50)
            record("sliced_pool fwd", case, name, ms, floor, copy_gbs, peer=bool(is_peer), users_per_s=b / ms * 1e3)
    for impl, op in native_and_triton("slice_timeline"):
        ms = bench(lambda: op(*args[1:]))
        record("slice_timeline", case, impl, ms, nbytes(*ids, w["ts"], w["cats"], w["floats"]), copy_gbs)


# ------------------------------------------------------------------ jagged pooling


@guarded
def bench_jagged(copy_gbs: float, bag: int, dtype: torch.dtype) -> None:
    rows, d = 1_000_000, 256
    n = 4_000_000 if bag >= 1000 else 2_000_000
    m = max(1, n // bag)
    n = m * bag
    table = torch.randn(rows, d, device="cuda").to(dtype)
    ids = torch.randint(0, rows, (n,), device="cuda")
    offsets = torch.arange(0, n + 1, bag, device="cuda")
    w = torch.rand(n, device="cuda")
    floor = n * d * table.element_size() + nbytes(ids, offsets, w) + m * d * table.element_size()
    case = f"bags of {bag} x {m} {str(dtype).split('.')[-1]}"
    expected = ref.jagged_mean_pool(table, ids, offsets, w) if n <= 4_000_000 else None
    seg = torch.repeat_interleave(torch.arange(m, device="cuda"), bag)
    wt = w.to(dtype)

    def embedding_bag_peer():
        s = F.embedding_bag(ids, table, offsets[:-1], mode="sum", per_sample_weights=wt)
        den = torch.zeros(m, device="cuda").index_add_(0, seg, w)
        return s / den.clamp_min(1e-30)[:, None].to(s.dtype)

    for impl, op in native_and_triton("jagged_mean_pool"):
        out = op(table, ids, offsets, w)
        if expected is not None:
            tol = 1e-4 if dtype == torch.float32 else 2e-2
            torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)
        record("jagged_mean_pool fwd", case, impl, bench(lambda: op(table, ids, offsets, w)), floor, copy_gbs)
    record("jagged_mean_pool fwd", case, "F.embedding_bag + div", bench(embedding_bag_peer), floor, copy_gbs, peer=True)
    grad = torch.randn(m, d, device="cuda").to(dtype)
    for impl, name in (("dv365 cuda", "jagged_mean_pool_backward"), ("dv365 triton", "jagged_mean_pool_backward_triton")):
        op = getattr(ops, name, None)
        if op is not None:
            record("jagged_mean_pool bwd", case, impl, bench(lambda: op(grad, ids, offsets, w, rows)),
                   nbytes(grad, ids, w) + rows * d * table.element_size(), copy_gbs)
    tr = table.detach().requires_grad_()

    def embedding_bag_backward_peer():
        out = F.embedding_bag(ids, tr, offsets[:-1], mode="sum", per_sample_weights=wt)
        (g,) = torch.autograd.grad(out, tr, grad)
        return g

    record("jagged_mean_pool bwd", case, "F.embedding_bag fwd+bwd", bench(embedding_bag_backward_peer),
           nbytes(grad, ids, w) + rows * d * table.element_size(), copy_gbs, peer=True)


# ------------------------------------------------------------------ token pooling and int4


@guarded
def bench_token_pool(copy_gbs: float, dtype: torch.dtype) -> None:
    x = torch.randn(2048, 256, 200, device="cuda").to(dtype)
    stride = 2
    out = ops.token_pool(x, stride)
    floor = nbytes(x, out)
    case = f"[2048, 256, 200] /2 {str(dtype).split('.')[-1]}"
    for impl, op in native_and_triton("token_pool"):
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(op(x[:4], stride).float(), ref.token_pool(x[:4], stride).float(), atol=tol, rtol=tol)
        record("token_pool fwd", case, impl, bench(lambda: op(x, stride)), floor, copy_gbs, copy_fraction=floor / copy_gbs / 1e6)
    record("token_pool fwd", case, "x.unflatten(-1).mean(-1)", bench(lambda: x.unflatten(-1, (100, 2)).mean(-1)), floor, copy_gbs, peer=True)
    g = torch.randn_like(out)
    for impl, name in (("dv365 cuda", "token_pool_backward"), ("dv365 triton", "token_pool_backward_triton")):
        op = getattr(ops, name, None)
        if op is not None:
            tol = 1e-6 if dtype == torch.float32 else 1e-2
            torch.testing.assert_close(op(g[:4], stride, 200).float(), (g[:4].float() / 2).repeat_interleave(2, -1),
                                       atol=tol, rtol=tol)
            record("token_pool bwd", case, impl, bench(lambda: op(g, stride, 200)), floor, copy_gbs,
                   copy_fraction=floor / copy_gbs / 1e6)
    record("token_pool bwd", case, "repeat_interleave / 2", bench(lambda: g.repeat_interleave(2, -1) / 2), floor, copy_gbs, peer=True)


@guarded
def bench_int4(copy_gbs: float, half: bool) -> None:
    x = torch.randn(1_000_000, 256, device="cuda")
    packed = ops.int4_quantize(x, half)
    assert torch.equal(packed[:1000], ref.int4_quantize(x[:1000], half))
    assert torch.equal(ops.int4_dequantize(packed[:1000], half, None), ref.int4_dequantize(packed[:1000], half))
    case = f"1M x 256 fp32 {'half' if half else 'fp32'} scale/bias"
    floor = nbytes(x, packed)
    for impl, op in native_and_triton("int4_quantize"):
        record("int4_quantize", case, impl, bench(lambda: op(x, half)), floor, copy_gbs)
    record("int4_quantize", case, "reference (torch ops)", bench(lambda: ref.int4_quantize(x, half)), floor, copy_gbs, peer=True)
    for impl, op in native_and_triton("int4_dequantize"):
        record("int4_dequantize", case, impl, bench(lambda: op(packed, half, None)), floor, copy_gbs)
    record("int4_dequantize", case, "reference (torch ops)", bench(lambda: ref.int4_dequantize(packed, half)), floor, copy_gbs, peer=True)


# ------------------------------------------------------------------ report


def versions() -> dict:
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception as e:  # noqa: BLE001
            return f"unavailable ({e})"

    # DV365_COMMIT first: the device machine's copy of the tree can carry a stale .git (2026-11-28: it reported
    # the session's first commit), so the caller passes the commit it sent
    marker = pathlib.Path(".commit")
    commit = (os.environ.get("DV365_COMMIT") or (marker.read_text().strip() if marker.exists() else "")
              or run(["git", "rev-parse", "HEAD"]) or "unknown")
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        gpu=torch.cuda.get_device_name(),
        driver=run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        torch=torch.__version__, cuda=torch.version.cuda, triton=getattr(triton, "__version__", None),
        python=platform.python_version(), commit=commit,
    )


def table_md(copy_gbs: float) -> str:
    lines = [f"Device-to-device copy: **{copy_gbs:.0f} GB/s** (bytes read + written).", "",
             "| op | case | implementation | time (ms) | GB/s | × best peer | × floor | notes |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for (group, case) in dict.fromkeys((r["group"], r["case"]) for r in ROWS):
        rows = [r for r in ROWS if r["group"] == group and r["case"] == case]
        peers = [r["ms"] for r in rows if r.get("peer")]
        best = min(peers) if peers else None
        for r in rows:
            speed = f"{best / r['ms']:.2f}" if best and not r.get("peer") else ""
            notes = []
            if "users_per_s" in r:
                notes.append(f"{r['users_per_s']:.0f} users/s")
            if "bwd_over_fwd" in r:
                notes.append(f"bwd/fwd {r['bwd_over_fwd']:.2f}")
            if r["group"] in ("token_pool fwd", "token_pool bwd", "int4_quantize", "int4_dequantize") and r["ms"] == r["ms"]:
                notes.append(f"{r['gbs'] / copy_gbs * 100:.0f}% of copy BW")
            if "error" in r:
                notes.append("ERROR")
            lines.append(f"| {group} | {case} | {r['impl']}{' (peer)' if r.get('peer') else ''} | {r['ms']:.3f} | "
                         f"{r['gbs']:.0f} | {speed} | {r['ms'] / r['floor_ms']:.2f} | {', '.join(notes)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="W40K only (fp32 and bf16), no other ops")
    parser.add_argument("--ops", default="sliced,jagged,token,int4", help="comma-separated subset to run")
    parser.add_argument("--sp-child", help=argparse.SUPPRESS)  # sp_variant's child process
    args = parser.parse_args()
    if args.sp_child:
        return sp_child(json.loads(args.sp_child))
    todo = set(args.ops.split(","))
    if args.quick:
        todo &= {"sliced"}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = versions()
    print(info, flush=True)
    copy_gbs = copy_bandwidth()
    print(f"copy bandwidth {copy_gbs:.0f} GB/s", flush=True)
    if "sliced" in todo:
        for dtype in (torch.float32, torch.bfloat16):
            bench_sliced_pool(copy_gbs, dtype, 32, with_peers=True)
        bench_sliced_pool(copy_gbs, torch.float32, 4, with_peers=False)
    if "jagged" in todo:
        for bag in (10, 1000, 70_000):
            bench_jagged(copy_gbs, bag, torch.float32)
        bench_jagged(copy_gbs, 1000, torch.bfloat16)
    if "token" in todo:
        for dtype in (torch.float32, torch.bfloat16):
            bench_token_pool(copy_gbs, dtype)
    if "int4" in todo:
        for half in (False, True):
            bench_int4(copy_gbs, half)
    md = table_md(copy_gbs)
    header = "\n".join(f"- {k}: {v}" for k, v in info.items())
    (out / "bench.md").write_text(f"{header}\n\n{md}\n")
    (out / "bench.json").write_text(json.dumps(dict(info=info, copy_gbs=copy_gbs, rows=ROWS), indent=1))
    print(md)


if __name__ == "__main__":
    sys.exit(main())
