"""Multi-slicing ops (paper eq. 2-6): slice_timeline, sliced_pool and its backward ops against the reference."""

import math
import pathlib
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import TOLERANCES, assert_close

import dv365_ops
from dv365_ops import program as P
from dv365_ops import reference
from dv365_ops.testing import DAY, GAP, random_program, random_timeline

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
ROWS = (97, 31)
TIMELINE_KEYS = ("offsets", "ts", "cats", "floats", "request_ts")


def _inputs(lengths, device, s=23, with_floats=True, cats=(7, 3, 4)):
    tl = random_timeline(lengths, table_rows=ROWS, cat_cardinality=cats, with_floats=with_floats, device=device)
    prog_i, prog_f = random_program(s, num_tables=len(ROWS), cat_cardinality=cats, with_floats=with_floats, device=device)
    return dict(tl, prog_i=prog_i, prog_f=prog_f)


def _tables(device, dtype, d):
    return [torch.randn(r, d, device=device).to(dtype) for r in ROWS]


def _timeline_args(a):
    return (a["ids"], *(a[k] for k in TIMELINE_KEYS), a["prog_i"], a["prog_f"])


def _check_timeline(a):
    values, weights, lengths = dv365_ops.slice_timeline(*_timeline_args(a))
    ref_values, ref_weights, ref_lengths = reference.slice_timeline(*_timeline_args(a))
    assert torch.equal(lengths, ref_lengths)
    assert torch.equal(values, ref_values)
    assert torch.equal(weights, ref_weights)
    return values, weights, lengths


def _check_pool(a, tables, pooled_tol=None):
    pooled, wsum = dv365_ops.sliced_pool(tables, *_timeline_args(a))
    # the oracle pools in float64: a float32 sum over 70 000 events is not itself within float32 tolerance
    ref_pooled, ref_wsum = reference.sliced_pool([t.double() for t in tables], *_timeline_args(a))
    ref_pooled = ref_pooled.to(tables[0].dtype)
    assert pooled.dtype == tables[0].dtype and wsum.dtype == torch.float32
    if pooled_tol is None:
        assert_close(pooled, ref_pooled)
    else:
        torch.testing.assert_close(pooled, ref_pooled, atol=pooled_tol, rtol=pooled_tol)
    assert_close(wsum, ref_wsum, torch.float32)
    return pooled, wsum


# ---- the program layout: one fact, two mirrors


def test_header_enums_match_program_py():
    text = (pathlib.Path(__file__).parents[1] / "csrc" / "dv365_prog.h").read_text()
    consts = {m[0]: int(m[1]) for m in re.findall(r"\b(k\w+)\s*=\s*(\d+)", text)}
    expected = {
        "kTable": P.TABLE,
        "kWinLo": P.WIN_LO,
        "kWinHi": P.WIN_HI,
        "kFlags": P.FLAGS,
        "kNumInt": P.NUM_INT,
        "kDwellLo": P.DWELL_LO,
        "kDwellHi": P.DWELL_HI,
        "kRatioLo": P.RATIO_LO,
        "kRatioHi": P.RATIO_HI,
        "kBeta": P.BETA,
        "kGamma": P.GAMMA,
        "kS0": P.S0,
        "kNumFloat": P.NUM_FLOAT,
        "kWeighted": P.WEIGHTED,
        "kDwellFilter": P.DWELL_FILTER,
        "kRatioFilter": P.RATIO_FILTER,
        "kNumCatFilters": P.NUM_CAT_FILTERS,
        "kMaxCatValue": P.MAX_CAT_VALUE,
        "kMaxScore": int(P.MAX_SCORE),
    }
    for j in range(P.NUM_CAT_FILTERS):
        expected[f"kCatField{j}"] = P.CAT_FIELD[j]
        expected[f"kCatMask{j}"] = P.CAT_MASK[j]
    assert {k: consts.get(k) for k in expected} == expected


# ---- forward against the reference on fresh random data

LENGTHS = [[], [0], [1], [0, 0, 0], [0, 1, 5, 123, 257], [300, 0, 17, 1, 1, 2]]


@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
@pytest.mark.parametrize("with_floats", [True, False])
def test_slice_timeline_matches_reference(device, lengths, with_floats):
    _check_timeline(_inputs(lengths, device, with_floats=with_floats))


@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [1, 5, 33])
def test_sliced_pool_matches_reference(device, lengths, dtype, d):
    a = _inputs(lengths, device)
    _check_pool(a, _tables(device, dtype, d))


def test_long_history_70k(device):
    a = _inputs([70_000, 3, 0, 12_345], device, s=31)
    _check_timeline(a)
    # a float32 running sum of tens of thousands of rows is off the exact mean by about sqrt(n) * eps (2e-5 at
    # n = 70 000; 2.2e-5 seen once in CI): the pooled values get 5e-5, and the weight sums keep float32's 1e-5,
    # which still notices one event missing from a slice of 70 000 (1.4e-5 of the sum)
    _check_pool(a, _tables(device, torch.float32, 8), pooled_tol=5e-5)


def test_many_slices_and_no_categorical_rows(device):
    a = _inputs([40, 0, 77], device, s=150, cats=())
    _check_timeline(a)
    _check_pool(a, _tables(device, torch.float32, 4))


def test_request_before_all_events(device):
    a = _inputs([20, 5, 0, 9], device)
    a["request_ts"] = a["ts"].min() - 1000 - torch.arange(4, device=device)
    a["prog_i"][::2, P.WIN_LO] = -10 * DAY  # some windows reach into the future
    _check_timeline(a)
    _check_pool(a, _tables(device, torch.float32, 3))


def test_non_contiguous_inputs(device):
    a = _inputs([9, 0, 31], device)
    a["ids"] = [torch.stack([i, i], 1)[:, 0] for i in a["ids"]]
    a["cats"] = a["cats"].t().contiguous().t()
    a["floats"] = a["floats"].t().contiguous().t()
    tables = [torch.randn(6, r, device=device).t() for r in ROWS]
    assert not tables[0].is_contiguous() and not a["ids"][0].is_contiguous()
    _check_timeline(a)
    _check_pool(a, tables)


def test_tables_sharing_one_ids_tensor(device):
    a = _inputs([50, 7], device)
    a["ids"] = [a["ids"][1], a["ids"][1]]
    _check_pool(a, [torch.randn(ROWS[1], 4, device=device) for _ in ROWS])


# ---- exact boundaries: windows and the 24 h gap, dwell / ratio bounds, the weighted score


def _manual(dt, dur, dwell, device, cats=None):
    n = len(dt)
    req = 1_700_000_000
    order = sorted(range(n), key=lambda i: -dt[i])  # ts ascending
    dt = [dt[i] for i in order]
    floats = torch.tensor([[dur[i] for i in order], [dwell[i] for i in order]], dtype=torch.float32)
    return dict(
        ids=[torch.arange(n, device=device) * 10 + torch.tensor(order, device=device)],
        offsets=torch.tensor([0, n], device=device),
        ts=torch.tensor([req - x for x in dt], device=device),
        cats=torch.zeros(1, n, dtype=torch.int8, device=device) if cats is None else cats.to(device),
        floats=floats.to(device),
        request_ts=torch.tensor([req], device=device),
    )


def _one_slice(device, win=(-(2**62), P.NO_UPPER_BOUND), flags=0, **f):
    pi = torch.tensor([[0, -1, 0, -1, 0, -1, 0, win[0], win[1], flags]], dtype=torch.int64, device=device)
    pf = torch.zeros(1, P.NUM_FLOAT, dtype=torch.float64, device=device)
    for name, value in f.items():
        pf[0, getattr(P, name)] = value
    return pi, pf


def _kept(a, pi, pf):
    values, weights, lengths = _check_timeline(dict(a, prog_i=pi, prog_f=pf))
    _check_pool(dict(a, prog_i=pi, prog_f=pf), [torch.randn(10 * a["ts"].numel(), 3, device=a["ts"].device)])
    return sorted((values % 10).tolist()), weights


@pytest.mark.parametrize("t_ub", [3 * DAY, 7 * DAY])
def test_window_and_gap_boundaries(device, t_ub):
    dt = [t_ub + 1, t_ub, GAP + 1, GAP, 0, -5]
    a = _manual(dt, [1.0] * 6, [1.0] * 6, device)
    kept, _ = _kept(a, *_one_slice(device, win=(GAP, t_ub)))
    assert kept == [1, 2]  # Δt = T_ub kept, Δt = gap dropped
    kept, _ = _kept(a, *_one_slice(device, win=(GAP, P.NO_UPPER_BOUND)))
    assert kept == [0, 1, 2]
    kept, _ = _kept(a, *_one_slice(device, win=(-6, 0)))
    assert kept == [4, 5]


def test_dwell_and_ratio_bounds_inclusive(device):
    dur = [4.0, 4.0, 4.0, 4.0, 0.0, 0.0]
    dwell = [2.0, 3.0, 1.9, 3.5, 0.0, 2.0]  # ratios 0.5, 0.75, 0.475, 0.875; photos (dur = 0) have none
    a = _manual([10, 20, 30, 40, 50, 60], dur, dwell, device)
    kept, _ = _kept(a, *_one_slice(device, flags=P.DWELL_FILTER, DWELL_LO=2.0, DWELL_HI=3.0))
    assert kept == [0, 1, 5]  # a photo's dwell still counts
    kept, _ = _kept(a, *_one_slice(device, flags=P.RATIO_FILTER, RATIO_LO=0.5, RATIO_HI=0.75, BETA=1.0))
    assert kept == [0, 1]
    kept, _ = _kept(a, *_one_slice(device, flags=P.RATIO_FILTER, RATIO_LO=0.5, RATIO_HI=math.inf, BETA=1.0))
    assert kept == [0, 1, 3]  # dur = 0: no watch ratio, not an infinite one
    kept, _ = _kept(a, *_one_slice(device, flags=P.RATIO_FILTER, RATIO_LO=0.0, RATIO_HI=math.inf, BETA=0.5))
    assert kept == [0, 1, 2, 3]


def test_unknown_fields_never_select_and_never_weigh(device):
    # the op called directly, no TimelineBatch validation: a negative, NaN or infinite dwell is unknown; so is a
    # negative, NaN, infinite or zero duration (program.py)
    nan, inf = math.nan, math.inf
    dur = [10.0, 10.0, 10.0, 10.0, -5.0, nan, inf, 0.0, 1e-45, 10.0]
    dwell = [-1.0, -0.5, nan, inf, 5.0, 5.0, 5.0, 5.0, 60.0, 5.0]
    a = _manual([10 * (i + 1) for i in range(10)], dur, dwell, device)
    kept, _ = _kept(a, *_one_slice(device, flags=P.DWELL_FILTER, DWELL_LO=-math.inf, DWELL_HI=math.inf))
    assert kept == [4, 5, 6, 7, 8, 9]  # every finite, non-negative dwell; the duration does not matter here
    kept, _ = _kept(a, *_one_slice(device, flags=P.RATIO_FILTER, RATIO_LO=-math.inf, RATIO_HI=math.inf, BETA=1.0))
    assert kept == [8, 9]  # a known dwell over a known, positive duration
    pi, pf = _one_slice(device, flags=P.WEIGHTED, GAMMA=1.0, S0=-1.0)
    kept, weights = _kept(a, pi, pf)
    assert kept == [8, 9]
    # 1e-45 s gives a score near 3e46: capped, so the pooled row stays finite
    assert sorted(weights.tolist()) == [pytest.approx(math.log1p(5.0) / math.log1p(10.0)), P.MAX_SCORE]
    pooled, wsum = dv365_ops.sliced_pool([torch.randn(100, 4, device=device)], *_timeline_args(dict(a, prog_i=pi, prog_f=pf)))
    assert torch.isfinite(pooled).all() and bool((wsum > 0).all()) and bool((weights >= 0).all())


def test_ratio_beta_half_at_bounds(device):
    # beta = 0.5 is pre-tested with sqrt; ratios on or one float32 step off a bound take the exact path
    def step(x: float, toward: float) -> float:
        return float(torch.nextafter(torch.tensor(x), torch.tensor(toward)))  # one float32 step

    dur = [4.0, 9.0, 4.0, 4.0, 2.0, -0.0, 0.0, 16.0]
    dwell = [2.0, 9.0, step(2.0, 0.0), step(6.0, 7.0), 1.4142135, 1.0, 1.0, 12.0]
    a = _manual([10, 20, 30, 40, 50, 60, 70, 80], dur, dwell, device)
    kept, _ = _kept(a, *_one_slice(device, flags=P.RATIO_FILTER, RATIO_LO=1.0, RATIO_HI=3.0, BETA=0.5))
    assert {0, 1, 7} <= set(kept) and not {2, 3, 5, 6} & set(kept)


def test_weighted_score_strict_and_zero_duration(device):
    # gamma = 1, dwell = dur: s = 1 exactly; dur = 0: the denominator is 0 and the event is dropped
    dur = [5.0, 9.0, 9.0, 0.0, 3.0]
    dwell = [5.0, 1.0, 30.0, 4.0, 0.0]
    a = _manual([10, 20, 30, 40, 50], dur, dwell, device)
    kept, weights = _kept(a, *_one_slice(device, flags=P.WEIGHTED, GAMMA=1.0, S0=1.0))
    assert kept == [2]
    pi, pf = _one_slice(device, flags=P.WEIGHTED, GAMMA=1.0, S0=0.0)
    kept, weights = _kept(a, pi, pf)
    assert kept == [0, 1, 2]  # s = 0 for dwell = 0 is not > 0
    expected = torch.tensor([math.log1p(d) / math.log1p(u) for d, u in zip(dwell[:3], dur[:3])], dtype=torch.float32)
    assert torch.equal(weights.cpu().sort().values, expected.sort().values)
    _, wsum = dv365_ops.sliced_pool([torch.randn(50, 2, device=device)], *_timeline_args(dict(a, prog_i=pi, prog_f=pf)))
    assert_close(wsum.cpu(), expected.sum().reshape(1, 1))


def test_categorical_filters_two_on_one_field(device):
    cats = torch.tensor([[0, 1, 2, 3, 63, 5]], dtype=torch.int8)
    a = _manual([60, 50, 40, 30, 20, 10], [1.0] * 6, [1.0] * 6, device, cats=cats)
    pi, pf = _one_slice(device)
    pi[0, P.CAT_FIELD[0]], pi[0, P.CAT_MASK[0]] = 0, 0b101110
    pi[0, P.CAT_FIELD[2]], pi[0, P.CAT_MASK[2]] = 0, 0b011011 | (-(2**63))
    kept, _ = _kept(a, pi, pf)
    assert kept == [1, 3]  # values 1 and 3 pass both masks; 63 passes only the second
    pi[0, P.CAT_MASK[0]] = -(2**63)
    kept, _ = _kept(a, pi, pf)
    assert kept == [4]


# ---- gradients


class _Densify(torch.autograd.Function):
    """Identity whose backward densifies a sparse gradient: gradcheck compares dense Jacobians only."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        assert grad.is_sparse
        return grad.to_dense()


@pytest.mark.parametrize("sparse", [False, True])
def test_gradcheck(sparse):
    a = _inputs([0, 1, 6, 13], "cpu", s=11)
    tables = [torch.randn(r, 3, dtype=torch.float64, requires_grad=True) for r in ROWS]

    def fn(*tables):
        if sparse:
            tables = [_Densify.apply(t) for t in tables]
        return dv365_ops.sliced_pool(list(tables), *_timeline_args(a), sparse=sparse)[0]

    assert torch.autograd.gradcheck(fn, tables)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparse", [False, True])
def test_backward_matches_reference_autograd(device, dtype, sparse):
    a = _inputs([40, 0, 3, 257], device)
    tables = [t.requires_grad_() for t in _tables(device, dtype, 7)]
    pooled, wsum = dv365_ops.sliced_pool(tables, *_timeline_args(a), sparse=sparse)
    assert not wsum.requires_grad
    grad = torch.randn_like(pooled)
    got = torch.autograd.grad(pooled, tables, grad)
    ref_tables = [t.detach().double().requires_grad_() for t in tables]
    expected = torch.autograd.grad(reference.sliced_pool(ref_tables, *_timeline_args(a))[0], ref_tables, grad.double())
    for g, e in zip(got, expected):
        assert g.is_sparse == sparse and g.dtype == dtype
        atol, rtol = TOLERANCES[dtype]
        torch.testing.assert_close(g.to_dense().double(), e, atol=atol * 10, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("case", ["random", "empty", "unnamed table", "one hot id", "shared ids"])
def test_sparse_grads_are_the_coalesced_touched_rows(device, dtype, case):
    """sparse=True gives, per table, exactly the rows its ids touch (sorted, unique, coalesced), each the sum of
    the per-event rows (sliced_pool_backward_rows) that land on it."""
    lengths = {"empty": [0, 0], "random": [40, 0, 3, 257]}.get(case, [30, 4, 61])
    a = _inputs(lengths, device, s=9)
    if case == "unnamed table":  # no slice pools table 1: its touched rows get zero gradients
        a["prog_i"][:, P.TABLE] = 0
    if case == "one hot id":  # every event of table 0 hits one row
        a["ids"][0] = torch.full_like(a["ids"][0], 5)
    if case == "shared ids":  # two tables pool one id tensor (its unique is shared)
        a["ids"][1] = a["ids"][0] % ROWS[1]
        a["ids"] = [a["ids"][1], a["ids"][1]]
    tables = [t.requires_grad_() for t in _tables(device, dtype, 6)]
    pooled, wsum = dv365_ops.sliced_pool(tables, *_timeline_args(a), sparse=True)
    grad = torch.randn_like(pooled)
    got = torch.autograd.grad(pooled, tables, grad)
    rows = torch.ops.dv365.sliced_pool_backward_rows(grad, wsum, *_timeline_args(a))
    for t, (g, r, ids) in enumerate(zip(got, rows, a["ids"])):
        assert g.is_sparse and g.is_coalesced() and g.dtype == dtype and g.shape == tables[t].shape
        assert torch.equal(g.indices()[0], torch.unique(ids))
        expected = torch.zeros(tables[t].shape, dtype=torch.float64, device=device).index_add_(0, ids, r.double())
        atol, rtol = TOLERANCES[dtype]
        torch.testing.assert_close(g.to_dense().double(), expected, atol=atol * 10, rtol=rtol)
        if case == "unnamed table" and t == 1:
            assert ids.numel() == 0 or torch.count_nonzero(g.values()) == 0


@pytest.mark.parametrize("method", [None, "mark", "sort", "per column"])
@pytest.mark.parametrize("events", [0, 1, 500])
def test_one_unique_for_all_id_columns_equals_one_per_column(device, events, method):
    """The sparse backward's renumbering of all the id columns at once (``mark``: a running sum over the marked
    rows; ``sort``: one ``unique`` of the stacked columns) gives each table what its own column's
    ``unique(sorted=True, return_inverse=True)`` gives: columns shared by tables (of different row counts), ids
    at 0 and at the last row, repeated ids."""
    from dv365_ops.slicing import _unique_columns

    g = torch.Generator().manual_seed(events)
    rows = [50, 7, 1000, 3]
    cols = [torch.randint(0, n, (events,), generator=g) for n in rows]
    if events:
        cols[0][0], cols[2][-1] = 49, 999
    cols = [c.to(device) for c in cols]
    # tables: column 0, column 1, column 0 again (fewer rows: its ids stay below 40), column 2, column 3
    cols[0] = cols[0] % 40
    ids = [cols[0], cols[1], cols[0].view(-1), cols[2], cols[3]]
    num_rows = [50, 7, 40, 1000, 3]
    got_rows, got_inverse = _unique_columns(ids, num_rows, method)
    for t, i in enumerate(ids):
        r, inv = torch.unique(i, sorted=True, return_inverse=True)
        assert torch.equal(got_rows[t], r) and torch.equal(got_inverse[t], inv), t
        assert got_inverse[t].is_contiguous() and got_inverse[t].dtype == inv.dtype == got_rows[t].dtype
    assert got_rows[0] is got_rows[2]  # the shared column's rows are one tensor


def test_backward_rows_zero_for_dropped_events(device):
    a = _inputs([30, 4], device, s=5)
    a["prog_i"][:, P.TABLE] = 0
    tables = _tables(device, torch.float32, 4)
    _, wsum = dv365_ops.sliced_pool(tables, *_timeline_args(a))
    grad = torch.randn(2, 5, 4, device=device)
    rows = torch.ops.dv365.sliced_pool_backward_rows(grad, wsum, *_timeline_args(a))
    keep, _ = reference.slice_membership(*(a[k] for k in TIMELINE_KEYS), a["prog_i"], a["prog_f"])
    assert torch.count_nonzero(rows[1]) == 0  # no slice pools table 1
    assert torch.count_nonzero(rows[0][~keep.any(0)]) == 0


# ---- opcheck, torch.compile


def _op_args(device, dtype=torch.float32):
    a = _inputs([0, 4, 9], device, s=7)
    tables = _tables(device, dtype, 5)
    return a, tables


def _timeline_samples(device):
    a, _ = _op_args(device)
    b = _inputs([], device, s=0)
    return [_timeline_args(a), _timeline_args(b)]


def _pool_samples(device):
    a, tables = _op_args(device)
    a64, tables64 = _op_args(device, torch.float64)
    return [
        (tables, *_timeline_args(a)),
        ([t.requires_grad_() for t in tables64], *_timeline_args(a64), True),
        ([t.requires_grad_() for t in _tables(device, torch.float64, 3)], *_timeline_args(a64)),
    ]


def _backward_samples(device):
    a, tables = _op_args(device)
    _, wsum = dv365_ops.sliced_pool(tables, *_timeline_args(a))
    grad = torch.randn(3, 7, 5, device=device)
    return [(grad, wsum, *_timeline_args(a), list(ROWS)), (grad.double(), wsum, *_timeline_args(a), list(ROWS))]


def _backward_rows_samples(device):
    return [args[:-1] for args in _backward_samples(device)]


OPCHECK_SAMPLES = {
    "slice_timeline": _timeline_samples,
    "sliced_pool": _pool_samples,
    "sliced_pool_backward": _backward_samples,
    "sliced_pool_backward_rows": _backward_rows_samples,
}


@pytest.mark.parametrize("op_name", sorted(OPCHECK_SAMPLES))
def test_opcheck(device, op_name):
    for args in OPCHECK_SAMPLES[op_name](device):
        torch.library.opcheck(getattr(torch.ops.dv365, op_name), args)


@pytest.mark.parametrize("method", ["mark", "sort"])
def test_opcheck_sparse_backward_numbering(device, method, monkeypatch):
    """The sparse backward numbers touched rows by a mark or a stacked sort when it runs eagerly (the CUDA default);
    traced (opcheck's AOT checks, torch.compile), it cannot read the counts back and numbers per column."""
    monkeypatch.setattr(dv365_ops.slicing, "_unique_method", lambda *a: method)
    for args in OPCHECK_SAMPLES["sliced_pool"](device):
        if args[-1] is True:  # the sparse samples
            torch.library.opcheck(torch.ops.dv365.sliced_pool, args)


class _SlicedTokens(torch.nn.Module):
    """Pools every slice of the users' histories and projects the tokens, like the user tower input."""

    def __init__(self, dim: int):
        super().__init__()
        self.tables = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(r, dim)) for r in ROWS])
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f):
        pooled, wsum = dv365_ops.sliced_pool(list(self.tables), ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f)
        return self.proj(pooled).relu() * (wsum[..., None] > 0)


@pytest.mark.compile
def test_compile_fullgraph(device):
    torch._dynamo.reset()
    model = _SlicedTokens(6).to(device)
    compiled = torch.compile(model, fullgraph=True)
    for lengths in ([3, 0, 5], [7, 1, 0, 2, 9]):
        args = _timeline_args(_inputs(lengths, device, s=9))
        out = compiled(*args)
        assert_close(out, model(*args))
        out.sum().backward()
        assert all(p.grad is not None for p in model.tables)


@pytest.mark.compile
def test_compile_slice_timeline(device):
    torch._dynamo.reset()

    def fn(*args):
        values, weights, lengths = dv365_ops.slice_timeline(*args)
        return values.sum(), (weights.double() * 2).sum(), lengths  # float64: sums in any order agree

    compiled = torch.compile(fn, fullgraph=True)
    args = _timeline_args(_inputs([4, 0, 11], device, s=6))
    for got, expected in zip(compiled(*args), fn(*args)):
        assert_close(got.double(), expected.double(), torch.float64)


# ---- property tests


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), max_size=6),
    s=st.integers(0, 40),
    d=st.integers(1, 9),
    with_floats=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_matches_reference(lengths, s, d, with_floats, seed):
    torch.manual_seed(seed)
    a = _inputs(lengths, "cpu", s=s, with_floats=with_floats)
    _, _, lengths_out = _check_timeline(a)
    pooled, wsum = _check_pool(a, _tables("cpu", torch.float32, d))
    assert lengths_out.numel() == s * len(lengths)
    # a slice's weight sum equals the sum of its emitted weights
    values, weights, lens = dv365_ops.slice_timeline(*_timeline_args(a))
    per_bag = torch.zeros(s * len(lengths)).index_add_(0, torch.repeat_interleave(torch.arange(lens.numel()), lens), weights)
    assert_close(wsum.t().reshape(-1), per_bag, torch.float32)


# ---- bad inputs


def _bad(device):
    a = _inputs([3, 4], device, s=4)
    a["prog_i"][:, P.FLAGS] = 0
    return a, _tables(device, torch.float32, 3)


def _call_pool(a, tables):
    return torch.ops.dv365.sliced_pool(tables, *_timeline_args(a))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a, t: a.update(offsets=a["offsets"].flip(0)), r"offsets must start at 0 and end at N"),
        (lambda a, t: a.update(offsets=torch.tensor([0, 8, 7], device=a["ts"].device)), r"offsets must be non-decreasing"),
        (lambda a, t: a.update(offsets=a["offsets"].int()), r"offsets must be Long"),
        (lambda a, t: a.update(ts=a["ts"].flip(0)), r"ts must be ascending within each user"),
        (lambda a, t: a.update(request_ts=a["request_ts"][:1]), r"request_ts must have shape \[B=2\]"),
        (lambda a, t: a.update(cats=a["cats"][:, :3]), r"cats must have shape \[C, N=7\]"),
        (lambda a, t: a["cats"].__setitem__((0, 2), -1), r"cats values must lie in \[0, 63\]"),
        (lambda a, t: a["cats"].__setitem__((1, 2), 64), r"cats values must lie in \[0, 63\]"),
        (lambda a, t: a.update(cats=a["cats"].float()), r"cats must be an integer tensor"),
        (lambda a, t: a.update(floats=a["floats"].double()), r"floats must be float32"),
        (lambda a, t: a.update(prog_i=a["prog_i"][:, :9]), r"prog_i must be an int64 tensor of shape \[S, 10\]"),
        (lambda a, t: a.update(prog_f=a["prog_f"][:3]), r"prog_f must be a float64 tensor of shape \[S=4, 7\]"),
        (lambda a, t: a["prog_i"].__setitem__((1, P.TABLE), 2), r"prog_i\[1, TABLE\] = 2 is out of range for 2 tables"),
        (lambda a, t: a["prog_i"].__setitem__((2, P.CAT_FIELD[1]), 3), r"prog_i\[2, CAT_FIELD1\] = 3 is out of range"),
        (lambda a, t: a["prog_i"].__setitem__((0, P.FLAGS), 8), r"prog_i\[0, FLAGS\] = 8 has unknown bits"),
        (
            lambda a, t: (a["prog_i"].__setitem__((0, P.FLAGS), P.WEIGHTED), a.update(floats=a["floats"][:0])),
            r"floats has 0 rows but slice 0 uses dwell, ratio or weight",
        ),
        (lambda a, t: a["ids"][1].__setitem__(3, ROWS[1]), r"ids\[1\]\[3\] = 31 is out of range for a table of 31 rows"),
        (lambda a, t: a["ids"][0].__setitem__(0, -1), r"ids\[0\]\[0\] = -1 is out of range"),
        (lambda a, t: a.update(ids=a["ids"][:1]), r"ids must hold one tensor per table"),
        (lambda a, t: t.__setitem__(1, t[1][:, :2]), r"tables must share D"),
        (lambda a, t: t.__setitem__(1, t[1].double()), r"tables must share one dtype"),
        (lambda a, t: t.__setitem__(0, t[0].int()), r"tables must be float32, bfloat16, float16 or float64"),
    ],
)
def test_bad_inputs(device, mutate, message):
    a, tables = _bad(device)
    mutate(a, tables)
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: " + message):
        _call_pool(a, tables)


def test_table_stand_ins_name_bad_ids_without_the_rows():
    """On a flagged error the CUDA op re-runs the CPU kernel for its message with each table replaced by one row of
    zeros seen through a zero row stride (csrc/cuda/host.h table_stand_ins): the CPU kernel reads only row counts to
    name a bad id, and pools such a table to zeros, reading nothing past its one row."""
    a, tables = _bad("cpu")
    stand_ins = [torch.zeros(1, t.shape[1]).expand(t.shape[0], t.shape[1]) for t in tables]
    pooled, wsum = _call_pool(a, stand_ins)
    assert not pooled.any() and torch.equal(wsum, _call_pool(a, tables)[1])
    a["ids"][1][3] = ROWS[1]
    with pytest.raises(RuntimeError, match=r"ids\[1\]\[3\] = 31 is out of range for a table of 31 rows"):
        _call_pool(a, stand_ins)


def test_bad_inputs_other_ops(device):
    a, tables = _bad(device)
    a["ts"] = a["ts"].flip(0)
    with pytest.raises(RuntimeError, match=r"dv365::slice_timeline: ts must be ascending"):
        torch.ops.dv365.slice_timeline(*_timeline_args(a))
    a, tables = _bad(device)
    _, wsum = _call_pool(a, tables)
    grad = torch.randn(2, 4, 3, device=device)
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool_backward: num_rows must hold one entry per table"):
        torch.ops.dv365.sliced_pool_backward(grad, wsum, *_timeline_args(a), [ROWS[0]])
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool_backward: ids\[1\]\[\d+\] = \d+ is out of range"):
        torch.ops.dv365.sliced_pool_backward(grad, wsum, *_timeline_args(a), [ROWS[0], 1])
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool_backward_rows: grad must be a tensor of shape \[B=2, S=4, D\]"):
        torch.ops.dv365.sliced_pool_backward_rows(grad[:, :3], wsum, *_timeline_args(a))
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool_backward_rows: weight_sum must be a float32"):
        torch.ops.dv365.sliced_pool_backward_rows(grad, wsum.double(), *_timeline_args(a))
