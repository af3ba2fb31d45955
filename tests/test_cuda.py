"""The CUDA kernels against dv365_ops.reference on fresh random data (skipped without a CUDA device).

The family test files run the same ops through the ``device`` fixture; this file adds what only CUDA has:
graph capture and replay, every kernel's odd shapes and dtypes, data-dependent errors reported through the
device-side flag, and opcheck / torch.compile on CUDA tensors.
"""

import os
import subprocess
import sys

import pytest
import torch

import dv365_ops
from dv365_ops import program as P
from dv365_ops import reference as ref

from cuda_inputs import random_offsets, random_sliced_inputs
from tolerances import TOLERANCES, assert_close

HAS_CUDA = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key("dv365::sliced_pool", "CUDA")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and the CUDA build")]

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
ops = torch.ops.dv365


def _has_fake(name: str) -> bool:
    from torch._library.simple_registry import singleton

    return singleton.find(f"dv365::{name}").fake_impl.kernel is not None


def _lengths(b: int, hi: int) -> list[int]:
    lengths = torch.randint(0, hi + 1, (b,)).tolist()
    if b > 2:
        lengths[1] = 0  # an empty bag / user
    return lengths


# ---------------------------------------------------------------- jagged mean pooling


def _jagged_inputs(lengths, rows, d, dtype, weighted, noncontig=False):
    dev = "cuda"
    offsets = random_offsets(lengths, dev)
    n = sum(lengths)
    table = torch.randn(rows, d + (3 if noncontig else 0), device=dev).to(dtype)
    if noncontig:
        table = table[:, 1 : d + 1]
    ids = torch.randint(0, rows, (n,), device=dev)
    weights = torch.rand(n, device=dev) + 0.1 if weighted else None
    return table, ids, offsets, weights


def _jagged_grads(grad, ids, offsets, weights, rows):
    acc = torch.float64
    m = offsets.numel() - 1
    n = ids.numel()
    seg = torch.repeat_interleave(torch.arange(m, device=ids.device), offsets.diff(), output_size=n)
    w = torch.ones(n, dtype=acc, device=ids.device) if weights is None else weights.to(acc)
    den = torch.zeros(m, dtype=acc, device=ids.device).index_add_(0, seg, w)
    coef = torch.where(den[seg] > 0, w / den[seg].clamp_min(1e-300), 0.0)
    per_row = coef[:, None] * grad.to(acc)[seg]
    dense = torch.zeros(rows, grad.shape[1], dtype=acc, device=ids.device).index_add_(0, ids.long(), per_row)
    return dense.to(grad.dtype), per_row.to(grad.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [1, 5, 8, 24, 123, 256, 1028])  # 16-byte loads when d % (16 / size) == 0
@pytest.mark.parametrize("weighted", [False, True])
def test_jagged_mean_pool(dtype, d, weighted):
    b = int(torch.randint(1, 40, ()))
    table, ids, offsets, weights = _jagged_inputs(_lengths(b, 300), 257, d, dtype, weighted, noncontig=d == 123)
    out = ops.jagged_mean_pool(table, ids, offsets, weights)
    assert_close(out, ref.jagged_mean_pool(table, ids, offsets, weights))
    grad = torch.randn_like(out)
    dense, rows = _jagged_grads(grad, ids, offsets, weights, table.shape[0])
    assert_close(ops.jagged_mean_pool_backward(grad, ids, offsets, weights, table.shape[0]), dense)
    assert_close(ops.jagged_mean_pool_backward_rows(grad, ids, offsets, weights), rows)


@pytest.mark.parametrize("lengths", [[70_000, 10, 0, 3], [0], [], [1]])
def test_jagged_mean_pool_long_and_empty_bags(lengths):
    table, ids, offsets, weights = _jagged_inputs(lengths, 1000, 64, torch.float32, True)
    out = ops.jagged_mean_pool(table, ids, offsets, weights)
    assert out.shape == (len(lengths), 64)
    assert_close(out, ref.jagged_mean_pool(table, ids, offsets, weights))
    grad = torch.randn_like(out)
    dense, rows = _jagged_grads(grad, ids, offsets, weights, 1000)
    assert_close(ops.jagged_mean_pool_backward(grad, ids, offsets, weights, 1000), dense)
    assert_close(ops.jagged_mean_pool_backward_rows(grad, ids, offsets, weights), rows)


def test_jagged_bad_inputs():
    table, ids, offsets, weights = _jagged_inputs([5, 7, 3], 20, 8, torch.float32, True)
    bad = ids.clone()
    bad[4] = 20
    # the messages are the CPU kernels' (csrc/checks/jagged.h, from the element the device error record names)
    with pytest.raises(RuntimeError, match=r"dv365::jagged_mean_pool: ids must be in \[0, 20\)"):
        ops.jagged_mean_pool(table, bad, offsets, weights)
    bad[4] = -1
    with pytest.raises(RuntimeError, match=r"dv365::jagged_mean_pool_backward: ids must be in \[0, 20\)"):
        ops.jagged_mean_pool_backward(torch.randn(3, 8, device="cuda"), bad, offsets, weights, 20)
    with pytest.raises(RuntimeError, match=r"dv365::jagged_mean_pool: offsets must be non-decreasing"):
        ops.jagged_mean_pool(table, ids, torch.tensor([0, 9, 4, 15], device="cuda"), weights)
    with pytest.raises(RuntimeError, match=r"dv365::jagged_mean_pool: offsets\[-1\] must equal the number of ids"):
        ops.jagged_mean_pool(table, ids, torch.tensor([0, 5, 12, 14], device="cuda"), weights)
    with pytest.raises(RuntimeError, match=r"dv365::jagged_mean_pool: weights must have shape \[N\]"):
        ops.jagged_mean_pool(table, ids, offsets, weights[:-1])
    with pytest.raises(RuntimeError, match=r"dv365::jagged_mean_pool: weights must be finite and non-negative"):
        ops.jagged_mean_pool(table, ids, offsets, -weights)
    with pytest.raises(RuntimeError, match=r"dv365::jagged_mean_pool: ids must be on the same device as table"):
        ops.jagged_mean_pool(table, ids.cpu(), offsets, weights)


def _message(fn, *args) -> str:
    with pytest.raises(RuntimeError) as info:
        fn(*args)
    return str(info.value).splitlines()[0]


def _cpu(args):
    return [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("seed", range(4))
def test_jagged_data_errors_name_what_the_cpu_kernel_names(seed):
    # several offenders at once, spread over many CTAs: the device error record keeps the first, as the CPU does
    g = torch.Generator().manual_seed(seed)
    table, ids, offsets, weights = _jagged_inputs(torch.randint(0, 300, (400,), generator=g).tolist(), 5000, 24,
                                                  torch.float32, True)
    n, m = ids.numel(), offsets.numel() - 1
    grad = torch.randn(m, 24, device="cuda")
    picks = torch.randperm(n, generator=g)[:5].to("cuda")
    bad_ids = ids.index_fill(0, picks, 5000 + seed)
    bad_w = weights.index_fill(0, picks, float("nan") if seed % 2 else -1.0)
    steps = torch.randperm(m - 2, generator=g)[:3].to("cuda") + 1
    bad_off = offsets.clone()
    bad_off[steps] = bad_off[steps + 1] + 1  # offsets[b] > offsets[b + 1] at each step
    cases = [
        (ops.jagged_mean_pool, (table, bad_ids, offsets, weights, False)),
        (ops.jagged_mean_pool, (table, ids, offsets, bad_w, False)),
        (ops.jagged_mean_pool, (table, ids, bad_off, weights, False)),
        (ops.jagged_mean_pool_backward, (grad, bad_ids, offsets, weights, 5000)),
        (ops.jagged_mean_pool_backward, (grad, ids, offsets, bad_w, 5000)),
        (ops.jagged_mean_pool_backward, (grad, ids, bad_off, weights, 5000)),
        (ops.jagged_mean_pool_backward_rows, (grad, ids, offsets, bad_w)),
        (ops.jagged_mean_pool_backward_rows, (grad, ids, bad_off, weights)),
    ]
    for fn, args in cases:
        assert _message(fn, *args) == _message(fn, *_cpu(args))


# ---------------------------------------------------------------- token pooling


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,stride", [((3, 5, 200), 2), ((2, 7, 123), 4), ((1, 1), 3), ((4, 0), 2), ((6, 257), 1), ((2, 3, 9), 9)])
def test_token_pool(dtype, shape, stride):
    x = torch.randn(*shape, device="cuda").to(dtype)
    if len(shape) == 3:
        x = x.transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous
    out = ops.token_pool(x, stride)
    assert_close(out, ref.token_pool(x, stride))
    xr = x.detach().double().requires_grad_()
    expected = ref.token_pool(xr, stride)
    grad = torch.randn_like(expected)
    (gx,) = torch.autograd.grad(expected, xr, grad)
    assert_close(ops.token_pool_backward(grad.to(dtype), stride, shape[-1]), gx.to(dtype))


def _token_pool_case(x, stride):
    out = ops.token_pool(x, stride)
    assert_close(out, ref.token_pool(x, stride))
    grad = torch.randn_like(out)
    n = x.shape[-1]
    counts = (n - torch.arange(out.shape[-1], device="cuda") * stride).clamp(max=stride)
    expected = (grad.double() / counts).repeat_interleave(stride, -1)[..., :n].to(x.dtype)
    assert_close(ops.token_pool_backward(grad, stride, n), expected)


# The 16-byte path takes full windows (n % stride == 0) of strides 1, 2, 3, 4, 8 on 16-byte aligned buffers, in
# runs of 16 bytes of output plus a scalar tail; everything else takes the scalar kernel.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,stride", [
    ((3, 21), 3), ((5, 64), 8), ((2, 12), 4), ((7, 14), 7), ((3, 10), 2), ((1, 6), 2), ((1, 2), 2), ((9, 5), 1),
    ((5, 33), 3), ((4, 40), 5), ((300, 256, 200), 2),
])
def test_token_pool_vector_and_scalar_paths(dtype, shape, stride):
    _token_pool_case(torch.randn(*shape, device="cuda").to(dtype), stride)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2, 3, 4, 7])
def test_token_pool_misaligned_views(dtype, stride):
    base = torch.randn(4, 8 * stride * 5 + 1, device="cuda").to(dtype)
    _token_pool_case(base[:, 1:], stride)  # non-contiguous: pooled from an aligned copy
    _token_pool_case(base[0, 1:], stride)  # contiguous, one element past a 16-byte boundary: scalar kernel
    _token_pool_case(base.view(-1)[8 // base.element_size() :][: 4 * 8 * stride], stride)  # 8-byte aligned only


def test_token_pool_bad_inputs():
    x = torch.randn(2, 6, device="cuda")
    with pytest.raises(RuntimeError, match=r"dv365::token_pool: stride must be >= 1"):
        ops.token_pool(x, 0)
    with pytest.raises(RuntimeError, match=r"dv365::token_pool: x must have at least 1 dimension"):
        ops.token_pool(torch.tensor(1.0, device="cuda"), 2)
    with pytest.raises(RuntimeError, match=r"dv365::token_pool: x must be float32, float64, bfloat16 or float16"):
        ops.token_pool(torch.ones(2, 6, dtype=torch.int32, device="cuda"), 2)
    with pytest.raises(RuntimeError, match=r"dv365::token_pool_backward: stride must be >= 1"):
        ops.token_pool_backward(x, 0, 6)
    with pytest.raises(RuntimeError, match=r"dv365::token_pool_backward: grad must have ceil\(n / stride\) = 3"):
        ops.token_pool_backward(x, 2, 6)


# ---------------------------------------------------------------- int4 codes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("rows,d", [(1, 2), (123, 256), (257, 10), (0, 8), (5, 0), (33, 1026)])
def test_int4(dtype, half, rows, d):
    x = (torch.randn(rows, d + 2, device="cuda") * 3).to(dtype)[:, 1 : d + 1]
    if rows > 3:
        x[2] = 1.5  # a constant row: zero scale
    packed = ops.int4_quantize(x, half)
    assert torch.equal(packed, ref.int4_quantize(x, half))
    for out_dtype in (None, torch.bfloat16):
        got = ops.int4_dequantize(packed, half, out_dtype)
        assert torch.equal(got, ref.int4_dequantize(packed.cpu(), half, out_dtype).cuda())
    strided = torch.cat([packed, packed], 1)[:, : packed.shape[1]]
    assert torch.equal(ops.int4_dequantize(strided, half), ref.int4_dequantize(packed, half))


# Contiguous rows with D % 8 == 0 and D <= 2048 are held in registers, L lanes per row (several rows per warp
# when short); other D, unaligned rows and longer rows take the warp-per-row loop kernels.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("d", [8, 16, 24, 40, 64, 128, 256, 264, 512, 1000, 2048, 2056, 6, 250, 1026])
def test_int4_register_and_loop_paths(dtype, half, d):
    rows = 1000 if d <= 256 else 77
    x = (torch.randn(rows, d, device="cuda") * 3).to(dtype)
    x[3] = -0.25  # a constant row: zero scale
    x[4, ::2] = 2.0  # two distinct values
    packed = ops.int4_quantize(x, half)
    assert torch.equal(packed, ref.int4_quantize(x, half))
    for out_dtype in (None, torch.bfloat16, torch.float16):
        assert torch.equal(ops.int4_dequantize(packed, half, out_dtype), ref.int4_dequantize(packed, half, out_dtype))
    offset = torch.cat([x, x], 1)[:, d:]  # rows whose start is 16-byte aligned only when d * size % 16 == 0
    assert torch.equal(ops.int4_quantize(offset, half), packed)


def test_int4_bad_inputs():
    bad = torch.randn(40, 256, device="cuda")
    bad[17, 3] = float("nan")
    with pytest.raises(RuntimeError, match=r"dv365::int4_quantize: x must be finite"):
        ops.int4_quantize(bad, False)
    bad[17, 3] = float("inf")
    with pytest.raises(RuntimeError, match=r"dv365::int4_quantize: x must be finite"):
        ops.int4_quantize(bad[:, :250], True)
    with pytest.raises(RuntimeError, match=r"dv365::int4_quantize: x must have an even number of columns D"):
        ops.int4_quantize(torch.randn(4, 5, device="cuda"), False)
    with pytest.raises(RuntimeError, match=r"dv365::int4_quantize: x must be float32, bfloat16 or float16"):
        ops.int4_quantize(torch.randn(4, 8, device="cuda", dtype=torch.float64), False)
    with pytest.raises(RuntimeError, match=r"dv365::int4_dequantize: packed must be uint8"):
        ops.int4_dequantize(torch.zeros(4, 12, device="cuda"), False, None)
    with pytest.raises(RuntimeError, match=r"dv365::int4_dequantize: packed must have D/2 code bytes plus 8"):
        ops.int4_dequantize(torch.zeros(4, 7, dtype=torch.uint8, device="cuda"), False, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("d", [256, 250, 2064])  # register kernel, loop kernel (d % 8), loop kernel (long rows)
def test_int4_unencodable_rows_name_what_the_cpu_kernel_names(dtype, half, d):
    # the first bad row among several of both kinds, found by any warp: its message is built from that row alone
    x = torch.randn(3000, d, device="cuda")
    x[2900, 5] = float("nan")
    x[1700, 0], x[1700, 1] = (-60000.0, 60000.0) if dtype == torch.float16 else (-3e38, 3e38)
    x[2100, 7] = float("inf")
    if half and dtype != torch.float16:
        x[900, 2] = -1e6  # beyond fp16 scale and bias
    x = x.to(dtype)
    assert _message(ops.int4_quantize, x, half) == _message(ops.int4_quantize, x.cpu(), half)


# ---------------------------------------------------------------- slicing


@pytest.mark.parametrize("with_floats", [True, False])
@pytest.mark.parametrize("s_count,t_count", [(1, 1), (7, 2), (70, 3), (200, 3), (0, 1)])
def test_slice_timeline(with_floats, s_count, t_count):
    lengths = _lengths(int(torch.randint(1, 12, ())), 900)
    _, ids, offsets, ts, cats, floats, req, pi, pf = random_sliced_inputs(
        lengths, s_count, t_count, 4, torch.float32, "cuda", with_floats=with_floats)
    values, weights, lens = ops.slice_timeline(ids, offsets, ts, cats, floats, req, pi, pf)
    ev, ew, el = ref.slice_timeline(ids, offsets, ts, cats, floats, req, pi, pf)
    assert torch.equal(lens, el)
    assert torch.equal(values, ev)
    assert_close(weights, ew)


def _sliced_expected_grads(grad, wsum, tables, ids, offsets, ts, cats, floats, req, pi, pf):
    keep, weight = ref.slice_membership(offsets, ts, cats, floats, req, pi, pf)
    n = ts.numel()
    b = offsets.numel() - 1
    user = torch.repeat_interleave(torch.arange(b, device=ts.device), offsets.diff(), output_size=n)
    coef = torch.where(keep, weight.double(), 0.0)  # [S, N]
    if grad.dtype == torch.float64:  # the op recomputes float64 weight sums (the forward returns float32 ones)
        ws = torch.zeros(coef.shape[0], b, dtype=torch.float64, device=ts.device).index_add_(1, user, coef)[:, user]
    else:
        ws = wsum.double().t()[:, user]  # [S, N]
    coef = torch.where(ws > 0, coef / ws.clamp_min(1e-300), 0.0)
    g = grad.double()[user]  # [N, S, D]
    rows, dense, dense_abs = [], [], []
    for t, (tab, t_ids) in enumerate(zip(tables, ids)):
        sel = pi[:, P.TABLE] == t
        r = torch.einsum("sn,nsd->nd", coef[sel], g[:, sel])
        rows.append(r.to(grad.dtype))
        zeros = torch.zeros(tab.shape[0], tab.shape[1], dtype=torch.float64, device=ts.device)
        dense.append(zeros.index_add(0, t_ids, r).to(grad.dtype))
        terms = (coef[sel] != 0).sum(0).double()  # [N]: the slices that add into each event's row
        dense_abs.append((zeros.index_add(0, t_ids, r.abs()), zeros[:, 0].index_add(0, t_ids, terms)[:, None]))
    return dense, rows, dense_abs


def _assert_close_sum(actual, expected, abs_sum_and_terms):
    """A dense gradient row sums every term of its id (thousands of events): accumulated in float32 with atomics
    in any order, it rounds by about sqrt(K) u sum|x| for K terms (u = 2**-24; Higham's probabilistic bound, taken
    4 times). Beyond the dtype's tolerance the check allows that; float64 (the exact check of the same kernels'
    logic) allows none."""
    abs_sum, terms = abs_sum_and_terms
    atol, rtol = TOLERANCES[expected.dtype]
    err = (actual.double() - expected.double()).abs()
    rounding = 0.0 if expected.dtype == torch.float64 else 4 * terms.sqrt() * 2.0**-24 * abs_sum
    bound = atol + rtol * expected.double().abs() + rounding
    worst = (err - bound).argmax()
    assert bool((err <= bound).all()), (
        f"{int((err > bound).sum())} of {err.numel()} elements off: at {worst.item()} got "
        f"{actual.flatten()[worst].item()}, expected {expected.flatten()[worst].item()} (bound {bound.flatten()[worst].item()})")


def _check_sliced_pool(inputs):
    """The forward against the reference, then both backwards against _sliced_expected_grads."""
    tables, ids, offsets, ts, cats, floats, req, pi, pf = inputs
    pooled, wsum = ops.sliced_pool(*inputs)
    e_pooled, e_wsum = ref.sliced_pool(*inputs)
    assert_close(wsum, e_wsum, torch.float32)
    assert_close(pooled, e_pooled)
    grad = torch.randn_like(pooled)
    dense, rows, dense_abs = _sliced_expected_grads(grad, wsum, *inputs)
    got_dense = ops.sliced_pool_backward(grad, wsum, ids, offsets, ts, cats, floats, req, pi, pf,
                                         [t.shape[0] for t in tables])
    got_rows = ops.sliced_pool_backward_rows(grad, wsum, ids, offsets, ts, cats, floats, req, pi, pf)
    for t in range(len(tables)):
        _assert_close_sum(got_dense[t], dense[t], dense_abs[t])
        assert_close(got_rows[t], rows[t])


@pytest.mark.parametrize("dtype", DTYPES)
# d = 136 and 264: a lane's second 16-byte chunk outside D, and a second 256-column tile
@pytest.mark.parametrize("s_count,t_count,d", [(1, 1, 1), (7, 2, 5), (70, 3, 123), (200, 3, 256), (150, 1, 40),
                                               (20, 2, 136), (30, 2, 264)])
def test_sliced_pool(dtype, s_count, t_count, d):
    lengths = _lengths(int(torch.randint(1, 9, ())), 3000)
    _check_sliced_pool(random_sliced_inputs(lengths, s_count, t_count, d, dtype, "cuda", with_floats=s_count != 7))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sliced_pool_table_without_slices(dtype):
    """A table no slice names has no CTA block: its per-event gradient rows are the zeroed accumulator's (for
    16-bit tables that accumulator was once missing, and the zeroing wrote through a null pointer)."""
    inputs = list(random_sliced_inputs(_lengths(3, 800), 9, 2, 8, dtype, "cuda"))
    inputs[7] = inputs[7].clone()
    inputs[7][:, P.TABLE] = 0
    _check_sliced_pool(tuple(inputs))


# Each variant sets DV365_SP_* knobs (docs/tuning.md): work items of 64 events; a table's groups split over several
# CTA blocks or (32) each table in one block, whose per-event backward stores its rows where several blocks add
# into zeroed rows; 16 rows in flight per lane; the predicates evaluated in the pooling kernels rather than by the
# keep pass (KEEP 0, where the forward also chooses per four events how to add them for 4- and 8-byte dtypes); the
# dense backward merging only consecutive repeats of a row (SORT 0).
# The ops read the knobs once per process, so each variant runs in a fresh one (_run_with_knobs).
SP_KNOBS = [{}, {"ITEM": "64"}, {"ITEM": "64", "GROUPS": "32"}, {"GROUPS": "1"}, {"ROWS": "16"},
            {"ROWS": "16", "GROUPS": "3"}, {"KEEP": "0"}, {"KEEP": "0", "ITEM": "64", "GROUPS": "3"}, {"SORT": "0"}]


def _run_with_knobs(knobs: dict, body: str, *args) -> None:
    """Calls ``test_cuda.<body>(*args)`` in a fresh Python whose environment sets DV365_SP_<name> = value for the
    knobs (and no other DV365_SP_*); its failure fails the caller with the child's output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DV365_SP_")}
    env.update({f"DV365_SP_{k}": v for k, v in knobs.items()})
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {here!r}); import test_cuda; test_cuda.{body}(*{args!r})"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{knobs}: {done.stdout[-3000:]}{done.stderr[-6000:]}"


def _knob_id(knobs: dict) -> str:
    return "-".join(f"{a}{b}" for a, b in knobs.items()) or "default"


def _grouped_windows(dtype_names):
    from dv365_ops import testing

    rows = (300, 200, 100)
    pi, pf = testing.w40k_program(rows)
    for name in dtype_names:
        lengths = _lengths(int(torch.randint(1, 6, ())), 2500)
        tl = testing.random_timeline(lengths, table_rows=rows, cat_cardinality=testing.W40K_CAT_CARDINALITY,
                                     span_days=10, device="cuda")
        d = int(torch.randint(1, 70, ()))
        tables = [torch.randn(r, d, device="cuda").to(getattr(torch, name)) for r in rows]
        _check_sliced_pool((tables, tl["ids"], tl["offsets"], tl["ts"], tl["cats"], tl["floats"], tl["request_ts"],
                            pi.cuda(), pf.cuda()))


@pytest.mark.parametrize("knobs", SP_KNOBS, ids=_knob_id)
def test_sliced_pool_grouped_windows(knobs):
    """W40K's structured program (50 predicates x 4 windows: the kernels pool each predicate once per segment)
    on short timelines, every dtype, under every kernel variant the DV365_SP_* knobs choose (SP_KNOBS)."""
    _run_with_knobs(knobs, "_grouped_windows", [str(d).removeprefix("torch.") for d in DTYPES])


def _random_programs(dtype_names):
    for name in dtype_names:
        for s_count, t_count, d in ((70, 3, 123), (30, 2, 264), (9, 1, 8)):
            lengths = _lengths(int(torch.randint(1, 9, ())), 3000)
            _check_sliced_pool(random_sliced_inputs(lengths, s_count, t_count, d, getattr(torch, name), "cuda"))


@pytest.mark.parametrize("knobs", [{"GROUPS": "3"}, {"KEEP": "0"}, {"KEEP": "0", "GROUPS": "3"}], ids=_knob_id)
def test_sliced_pool_kernel_variants(knobs):
    """Random programs (overlapping filters, weights) in 3-group blocks and without the keep pass (where the forward
    chooses per four events between adding per group and per kept event), on the scalar (d = 123) and 16-byte
    column paths, float32, float64 and bfloat16 (the defaults run in test_sliced_pool)."""
    _run_with_knobs(knobs, "_random_programs", ["float32", "float64", "bfloat16"])


def test_sliced_pool_program_edited_in_place():
    """The host keeps what it read from the last program (its validity, its groups per table, which size the
    launch); an in-place edit bumps the tensor's version and must be seen."""
    inputs = random_sliced_inputs(_lengths(3, 500), 20, 2, 16, torch.float32, "cuda")
    tables, ids, offsets, ts, cats, floats, req, pi, pf = inputs
    ops.sliced_pool(*inputs)
    pi[:, P.TABLE] = 0  # every slice on table 0: more groups in one table
    pooled, wsum = ops.sliced_pool(*inputs)
    e_pooled, e_wsum = ref.sliced_pool(*inputs)
    assert_close(wsum, e_wsum, torch.float32)
    assert_close(pooled, e_pooled)
    pi[0, P.TABLE] = 5
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: prog_i\[0, TABLE\] = 5 is out of range"):
        ops.sliced_pool(*inputs)


def test_sliced_pool_program_inference_and_strided():
    """Programs the caches cannot key (inference tensors, which have no version counter; non-contiguous ones,
    copied every call) are read every call."""
    inputs = list(random_sliced_inputs(_lengths(2, 300), 12, 2, 8, torch.float32, "cuda"))
    expected = ref.sliced_pool(*inputs)
    pi = inputs[7]
    inputs[7] = torch.cat([pi, pi], 1)[:, : pi.shape[1]]  # strided
    for _ in range(2):
        assert_close(ops.sliced_pool(*inputs)[0], expected[0])
    with torch.inference_mode():
        inputs[7] = pi.clone()  # an inference tensor
        for _ in range(2):
            assert_close(ops.sliced_pool(*inputs)[0], expected[0])
        inputs[7] = torch.cat([pi, pi], 1)[:, : pi.shape[1]]
        assert_close(ops.sliced_pool(*inputs)[0], expected[0])


def test_sliced_pool_empty():
    inputs = random_sliced_inputs([0, 0], 5, 2, 8, torch.float32, "cuda")
    pooled, wsum = ops.sliced_pool(*inputs)
    assert pooled.shape == (2, 5, 8) and not pooled.any() and not wsum.any()
    inputs = random_sliced_inputs([], 5, 2, 8, torch.float32, "cuda")
    pooled, wsum = ops.sliced_pool(*inputs)
    assert pooled.shape == (0, 5, 8)


def test_sliced_bad_inputs():
    tables, ids, offsets, ts, cats, floats, req, pi, pf = random_sliced_inputs([30, 40], 9, 2, 8, torch.float32, "cuda")
    bad_ids = [ids[0].clone(), ids[1]]
    bad_ids[0][3] = tables[0].shape[0]
    unsorted = ts.clone()
    unsorted[1] = unsorted[2] + 10
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: ts must be ascending within each user"):
        ops.sliced_pool(tables, ids, offsets, unsorted, cats, floats, req, pi, pf)
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: ids\[0\]\[3\] = 50 is out of range"):
        ops.sliced_pool(tables, bad_ids, offsets, ts, cats, floats, req, pi, pf)
    bad_pi = pi.clone()
    bad_pi[:, P.CAT_FIELD[0]] = 0
    bad_pi[:, P.WIN_LO] = -1
    bad_pi[:, P.WIN_HI] = P.NO_UPPER_BOUND
    bad_cats = cats.clone()
    bad_cats[0, 5] = 64
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: cats values must lie in \[0, 63\]"):
        ops.sliced_pool(tables, ids, offsets, ts, bad_cats, floats, req, bad_pi, pf)
    with pytest.raises(RuntimeError, match=r"dv365::slice_timeline: cats values"):
        ops.slice_timeline(ids, offsets, ts, bad_cats, floats, req, bad_pi, pf)
    bad_pi = pi.clone()
    bad_pi[0, P.TABLE] = 2
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: prog_i\[0, TABLE\] = 2 is out of range for 2 tables"):
        ops.sliced_pool(tables, ids, offsets, ts, cats, floats, req, bad_pi, pf)
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: offsets must start at 0 and end at N"):
        ops.sliced_pool(tables, ids, torch.tensor([0, 50, 40], device="cuda"), ts, cats, floats, req, pi, pf)
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool_backward_rows: grad must be a tensor of shape"):
        ops.sliced_pool_backward_rows(torch.zeros(2, 8, 8, device="cuda"), torch.zeros(2, 9, device="cuda"), ids,
                                      offsets, ts, cats, floats, req, pi, pf)


# ---------------------------------------------------------------- graphs, compile, opcheck


def _graph_check(fn, make_inputs):
    """Capture fn on static inputs, refill them with fresh data, replay, compare with an eager call."""
    static = make_inputs()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(*static)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static)
    fresh = make_inputs()
    for s, f in zip(static, fresh):
        if isinstance(s, torch.Tensor):
            s.copy_(f)
        elif isinstance(s, list):
            for a, c in zip(s, f):
                a.copy_(c)
    graph.replay()
    torch.cuda.synchronize()
    expected = fn(*fresh)
    for o, e in zip(out if isinstance(out, (tuple, list)) else [out], expected if isinstance(expected, (tuple, list)) else [expected]):
        assert torch.equal(o, e) or torch.allclose(o.float(), e.float(), atol=1e-5, rtol=1e-5)


def test_cuda_graph_capture_forward_ops():
    lengths = [40, 0, 300, 7]
    def jagged_inputs():
        table = torch.randn(100, 32, device="cuda")
        offsets = random_offsets(lengths, "cuda")
        ids = torch.randint(0, 100, (sum(lengths),), device="cuda")
        return table, ids, offsets, torch.rand(sum(lengths), device="cuda")
    _graph_check(lambda t, i, o, w: ops.jagged_mean_pool(t, i, o, w), jagged_inputs)
    _graph_check(lambda x: ops.token_pool(x, 2), lambda: (torch.randn(4, 16, 200, device="cuda"),))
    _graph_check(lambda x: ops.int4_quantize(x, False), lambda: (torch.randn(64, 256, device="cuda"),))
    _graph_check(lambda p: ops.int4_dequantize(p, True, None),
                 lambda: (ops.int4_quantize(torch.randn(64, 256, device="cuda"), True),))
    fixed = random_sliced_inputs([500, 0, 1200], 30, 3, 64, torch.float32, "cuda")
    def sliced_inputs():
        fresh = random_sliced_inputs([500, 0, 1200], 30, 3, 64, torch.float32, "cuda")
        return ([t.clone() for t in fresh[0]], [i.clone() for i in fresh[1]], *fixed[2:])
    _graph_check(lambda *a: ops.sliced_pool(*a), sliced_inputs)


def test_bad_input_inside_graph_is_not_read_out_of_bounds():
    table = torch.randn(10, 8, device="cuda")
    offsets = torch.tensor([0, 3, 6], device="cuda")
    ids = torch.tensor([0, 1, 2, 3, 4, 5], device="cuda")
    ops.jagged_mean_pool(table, ids, offsets)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.jagged_mean_pool(table, ids, offsets)
    ids.copy_(torch.tensor([0, 1, 10**9, 3, -5, 5], device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()


OPS_WITH_FAKES = ["jagged_mean_pool", "token_pool", "int4_quantize", "int4_dequantize", "sliced_pool"]


@pytest.mark.compile
@pytest.mark.skipif(not all(_has_fake(n) for n in OPS_WITH_FAKES), reason="the families' fake impls are not registered")
def test_torch_compile_fullgraph_cuda():
    lengths = [30, 0, 500]
    table = torch.randn(100, 64, device="cuda")
    offsets = random_offsets(lengths, "cuda")
    ids = torch.randint(0, 100, (sum(lengths),), device="cuda")
    x = torch.randn(2, 64, 200, device="cuda")

    def f(table, ids, offsets, x):
        pooled = ops.jagged_mean_pool(table, ids, offsets, None)
        packed = ops.int4_quantize(pooled, False)
        return ops.int4_dequantize(packed, False, None), ops.token_pool(x, 2)

    compiled = torch.compile(f, fullgraph=True)
    for a, e in zip(compiled(table, ids, offsets, x), f(table, ids, offsets, x)):
        assert_close(a, e)
    inputs = random_sliced_inputs([300, 20], 12, 2, 32, torch.float32, "cuda")
    got = torch.compile(lambda *a: ops.sliced_pool(*a), fullgraph=True)(*inputs)
    exp = ops.sliced_pool(*inputs)
    assert_close(got[0], exp[0])


def _cuda_samples():
    lengths = [13, 0, 40]
    table, ids, offsets, weights = _jagged_inputs(lengths, 30, 8, torch.float32, True)
    sliced = random_sliced_inputs([60, 0, 25], 9, 2, 8, torch.float32, "cuda")
    tables, sids, soff, ts, cats, floats, req, pi, pf = sliced
    pooled, wsum = ops.sliced_pool(*sliced)
    grad = torch.randn_like(pooled)
    return {
        "jagged_mean_pool": (table, ids, offsets, weights),
        "jagged_mean_pool_backward": (torch.randn(3, 8, device="cuda"), ids, offsets, weights, 30),
        "jagged_mean_pool_backward_rows": (torch.randn(3, 8, device="cuda"), ids, offsets, weights),
        "token_pool": (torch.randn(2, 3, 11, device="cuda"), 2),
        "token_pool_backward": (torch.randn(2, 3, 6, device="cuda"), 2, 11),
        "int4_quantize": (torch.randn(5, 16, device="cuda"), True),
        "int4_dequantize": (ops.int4_quantize(torch.randn(5, 16, device="cuda"), False), False, torch.bfloat16),
        "slice_timeline": (sids, soff, ts, cats, floats, req, pi, pf),
        "sliced_pool": sliced,
        "sliced_pool_backward": (grad, wsum, sids, soff, ts, cats, floats, req, pi, pf, [t.shape[0] for t in tables]),
        "sliced_pool_backward_rows": (grad, wsum, sids, soff, ts, cats, floats, req, pi, pf),
    }


CUDA_OPS = [
    "jagged_mean_pool", "jagged_mean_pool_backward", "jagged_mean_pool_backward_rows", "token_pool",
    "token_pool_backward", "int4_quantize", "int4_dequantize", "slice_timeline", "sliced_pool",
    "sliced_pool_backward", "sliced_pool_backward_rows"]


@pytest.mark.parametrize("name", CUDA_OPS)
def test_opcheck_cuda(name):
    if not _has_fake(name):
        pytest.skip(f"dv365::{name} has no fake impl registered yet")
    args = _cuda_samples()[name]
    # the data-dependent op cannot run on fake tensors without a dynamic-size fake; the family test covers it
    torch.library.opcheck(getattr(ops, name).default, args)
