"""The Triton kernels (``torch.ops.dv365.*_triton``, issue 4) against ``dv365_ops.reference``.

On a machine without CUDA they run in Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest before
triton is imported), about a millisecond per program: inputs stay tiny, and the kernels' interpreter
block sizes are small so that the tiny inputs still cross every block boundary.
"""

import pytest
import torch

pytest.importorskip("triton")

from dv365_ops import _backend, program as P, reference  # noqa: E402
from dv365_ops.triton_kernels import _util  # noqa: E402
from tolerances import assert_close  # noqa: E402

T = torch.ops.dv365
# the interpreter computes masked-off lanes too (0 / 0, log(0)): numpy warns, the kernels discard them
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")
FLOAT_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.fixture
def device(device):
    if device.type == "cpu" and not _util.INTERPRET:
        pytest.skip("Triton on the CPU needs TRITON_INTERPRET=1 before triton is imported")
    return device


def _offsets(lengths, device):
    lengths = torch.as_tensor(lengths)
    return torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(device)


def _jagged_inputs(device, dtype=torch.float32, d=19, rows=23, lengths=(0, 3, 1, 40, 0, 5), weighted=True):
    offsets = _offsets(lengths, device)
    n = int(offsets[-1])
    table = torch.randn(rows, d, dtype=dtype, device=device)
    ids = torch.randint(0, rows, (n,), device=device)
    weights = torch.rand(n, device=device) if weighted else None
    if weighted and n:
        weights[: min(n, 3)] = 0  # a bag whose weights sum to 0 pools to zeros
    return table, ids, offsets, weights


# ---- jagged mean pooling


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_jagged_mean_pool_matches_reference(device, dtype, weighted):
    table, ids, offsets, weights = _jagged_inputs(device, dtype, d=300 if dtype == torch.float32 else 19, weighted=weighted)
    out = T.jagged_mean_pool_triton(table, ids, offsets, weights)
    assert out.dtype == dtype and out.shape == (offsets.numel() - 1, table.shape[1])
    assert_close(out, reference.jagged_mean_pool(table, ids, offsets, weights))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("weighted", [False, True])
def test_jagged_mean_pool_backward_matches_reference_autograd(device, dtype, weighted):
    table, ids, offsets, weights = _jagged_inputs(device, dtype, weighted=weighted)
    grad = torch.randn(offsets.numel() - 1, table.shape[1], dtype=dtype, device=device)
    ref_table = table.detach().double().requires_grad_()
    ref_w = weights.double() if weights is not None else None
    reference.jagged_mean_pool(ref_table, ids, offsets, ref_w).backward(grad.double())
    dense = T.jagged_mean_pool_backward_triton(grad, ids, offsets, weights, table.shape[0])
    rows = T.jagged_mean_pool_backward_rows_triton(grad, ids, offsets, weights)
    assert dense.dtype == rows.dtype == dtype and rows.shape == (ids.numel(), table.shape[1])
    assert_close(dense, ref_table.grad.to(dtype))
    from_rows = torch.zeros_like(ref_table.grad).index_add_(0, ids, rows.double())
    assert_close(from_rows.to(dtype), ref_table.grad.to(dtype))


def test_jagged_mean_pool_autograd_dense_and_sparse(device):
    table, ids, offsets, weights = _jagged_inputs(device, torch.float64, d=3, rows=4, lengths=(2, 0, 3))
    table.requires_grad_()
    grad = torch.randn(offsets.numel() - 1, 3, dtype=torch.float64, device=device)
    with _backend.use_backend("triton"):  # the backward ops resolve to their Triton kernels too
        assert torch.autograd.gradcheck(lambda t: T.jagged_mean_pool_triton(t, ids, offsets, weights), (table,))
        (dense,) = torch.autograd.grad(T.jagged_mean_pool_triton(table, ids, offsets, weights), table, grad)
        (sparse,) = torch.autograd.grad(T.jagged_mean_pool_triton(table, ids, offsets, weights, True), table, grad)
    assert sparse.is_sparse
    assert_close(sparse.to_dense(), dense)


def test_jagged_mean_pool_noncontiguous_table(device):
    table, ids, offsets, weights = _jagged_inputs(device, d=10)
    wide = torch.randn(table.shape[0], 20, device=device)[:, ::2]
    out = T.jagged_mean_pool_triton(wide, ids, offsets, weights)
    assert_close(out, reference.jagged_mean_pool(wide, ids, offsets, weights))


def test_jagged_mean_pool_bad_inputs(device):
    table, ids, offsets, weights = _jagged_inputs(device)
    with pytest.raises(RuntimeError, match=r"dv365::jagged_mean_pool: ids must be in \[0, 23\)"):
        T.jagged_mean_pool_triton(table, ids + 23, offsets, weights)
    decreasing = offsets.clone()
    decreasing[2] = decreasing[3] + 1
    with pytest.raises(RuntimeError, match="dv365::jagged_mean_pool: offsets must be non-decreasing"):
        T.jagged_mean_pool_triton(table, ids, decreasing, weights)
    with pytest.raises(RuntimeError, match=r"dv365::jagged_mean_pool: weights must have shape \[N\]"):
        T.jagged_mean_pool_triton(table, ids, offsets, weights[1:])
    with pytest.raises(RuntimeError, match="dv365::jagged_mean_pool: weights must be finite and non-negative"):
        T.jagged_mean_pool_triton(table, ids, offsets, -weights - 1)
    with pytest.raises(RuntimeError, match="dv365::jagged_mean_pool: ids must be int64"):
        T.jagged_mean_pool_triton(table, ids.int(), offsets, weights)
    with pytest.raises(RuntimeError, match="dv365::jagged_mean_pool: table must be 2-D"):
        T.jagged_mean_pool_triton(table[0], ids, offsets, weights)
    with pytest.raises(RuntimeError, match="dv365::jagged_mean_pool_backward: grad must have one row per bag"):
        T.jagged_mean_pool_backward_triton(table, ids, offsets, weights, 23)


# ---- int4


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int4_quantize_is_byte_identical(device, dtype, half):
    for rows, d in ((37, 38), (1, 2), (3, 258), (0, 8)):
        x = (torch.randn(rows, d, device=device) * 10).to(dtype)
        if rows > 2:
            x[1] = 1.5  # a constant row: zero range
            x[2, ::3] = x[2, 0]  # ties between rows' minimum and others
        codes = T.int4_quantize_triton(x, half)
        # the reference runs on the CPU: on CUDA, torch divides by the scalar 15 as a multiply by 1/15
        assert torch.equal(codes.cpu(), reference.int4_quantize(x.cpu(), half)), (rows, d)


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int4_dequantize_matches_reference(device, dtype, half):
    codes = reference.int4_quantize(torch.randn(29, 42, device=device) * 3, half)
    out = T.int4_dequantize_triton(codes, half, dtype)
    expected = reference.int4_dequantize(codes, half, dtype)
    if dtype == torch.bfloat16:
        assert_close(out, expected)  # the interpreter rounds fp32 -> bf16 its own way
    else:
        assert torch.equal(out, expected)
    assert T.int4_dequantize_triton(codes[:, :8] if not half else codes[:, :4], half).shape == (29, 0)


def test_int4_round_trip_of_a_noncontiguous_input(device):
    x = torch.randn(64, 17, 2, device=device)[:, :, 0]
    x = torch.cat([x, x[:, :1]], 1)[::2]
    back = T.int4_dequantize_triton(T.int4_quantize_triton(x))
    assert torch.equal(back.cpu(), reference.int4_dequantize(reference.int4_quantize(x.cpu())))


def test_int4_unencodable_row_copies_only_that_row(device, monkeypatch):
    # the message comes from the CPU kernel, which sees the one bad row, not the whole table
    from dv365_ops.triton_kernels import int4 as TI

    seen = []

    def spy(rows, half_scale_bias):
        seen.append(tuple(rows.shape))
        return quantize_on_cpu(rows, half_scale_bias)

    quantize_on_cpu = TI._quantize_on_cpu
    monkeypatch.setattr(TI, "_quantize_on_cpu", spy)
    x = torch.randn(9, 6, device=device)
    x[5] = torch.tensor([-3e38, 3e38, 0, 1, 0, 0])
    x[7] = float("nan")
    with pytest.raises(RuntimeError, match=r"^dv365::int4_quantize: row 5 of x spans \[-3e\+38, 3e\+38\], too wide"):
        T.int4_quantize_triton(x)
    assert seen == [(1, 6)]
    with pytest.raises(RuntimeError, match=r"^dv365::int4_quantize: x must be finite \(found NaN or Inf\)$"):
        T.int4_quantize_triton(x[6:])
    assert seen == [(1, 6), (1, 6)]


def test_int4_bad_inputs(device):
    with pytest.raises(RuntimeError, match="dv365::int4_quantize: x must have an even number of columns"):
        T.int4_quantize_triton(torch.randn(3, 5, device=device))
    with pytest.raises(RuntimeError, match="dv365::int4_quantize: x must be float32, bfloat16 or float16"):
        T.int4_quantize_triton(torch.ones(3, 4, dtype=torch.float64, device=device))
    with pytest.raises(RuntimeError, match="dv365::int4_dequantize: dtype must be float32, bfloat16 or float16"):
        T.int4_dequantize_triton(torch.ones(3, 12, dtype=torch.uint8, device=device), dtype=torch.float64)
    with pytest.raises(RuntimeError, match="dv365::int4_dequantize: packed must be uint8"):
        T.int4_dequantize_triton(torch.ones(3, 12, device=device))
    with pytest.raises(RuntimeError, match=r"dv365::int4_dequantize: packed must have D/2 code bytes .* 8 columns\), got 6"):
        T.int4_dequantize_triton(torch.ones(3, 6, dtype=torch.uint8, device=device))


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int4_signed_zero_minimum_and_denormal_range(device, dtype, half):
    # a zero minimum takes the sign fbgemm gives it (the reference's rule), a denormal range a FLT_MIN scale
    g = torch.Generator().manual_seed(0)
    for d in (8, 30, 260):
        x = torch.tensor([0.0, -0.0, 0.5, 2.0])[torch.randint(0, 4, (9, d), generator=g)]
        x[0], x[1] = -0.0, 0.0
        x = x.to(device=device, dtype=dtype)
        assert torch.equal(T.int4_quantize_triton(x, half).cpu(), reference.int4_quantize(x.cpu(), half)), d
    tiny = torch.tensor([[0, 1.5e-38, 7e-39, 1e-39]], device=device)
    assert torch.equal(T.int4_quantize_triton(tiny, False).cpu(), reference.int4_quantize(tiny.cpu(), False))


@pytest.mark.parametrize(
    "half, row, message",
    [
        (False, [0.0, float("nan"), 1.0, 2.0], "x must be finite"),
        (True, [float("-inf"), 0.0, 1.0, 2.0], "x must be finite"),
        (False, [-3e38, 3e38, 0.0, 1.0], r"row 1 of x spans \[-3e\+38, 3e\+38\], too wide for float32 codes"),
        (True, [-1e5, 0.0, 1.0, 2.0], r"row 1 of x spans \[-100000, 2\], beyond float16 scale/bias"),
    ],
)
def test_int4_rows_that_cannot_be_encoded_raise(device, half, row, message):
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], row], device=device)
    with pytest.raises(RuntimeError, match="dv365::int4_quantize: " + message):
        T.int4_quantize_triton(x, half)


# ---- sliced pooling


def _slicing_inputs(
    device, dtype=torch.float32, b=4, s=11, d=13, table_rows=(50, 7), num_cats=3, with_floats=True, max_len=30,
    uniform=False,
):
    lengths = torch.randint(0, max_len, (b,))
    lengths[0] = 0  # a user without history
    offsets = _offsets(lengths, "cpu")
    n = int(offsets[-1])
    day = 86_400
    request_ts = torch.randint(100 * day, 200 * day, (b,))
    # each user's timeline sorted by time, spread over 12 days before the request
    ts = torch.cat([torch.sort(r - torch.randint(0, 12 * day, (int(k),))).values for r, k in zip(request_ts, lengths)])
    cats = torch.randint(0, 64, (num_cats, n), dtype=torch.int16)
    floats = torch.zeros(0, n)
    if with_floats:
        floats = torch.stack([torch.rand(n) * 120 + 1, torch.rand(n) * 150])
        floats[1, :3] = 0.0  # zero dwell
    tables = [torch.randn(r, d, dtype=dtype) for r in table_rows]
    ids = [torch.randint(0, r, (n,)) for r in table_rows]
    prog_i = torch.zeros(s, P.NUM_INT, dtype=torch.int64)
    prog_f = torch.zeros(s, P.NUM_FLOAT, dtype=torch.float64)
    prog_i[:, P.TABLE] = torch.randint(0, len(table_rows), (s,))
    for field, mask in zip(P.CAT_FIELD, P.CAT_MASK):
        used = torch.rand(s) < 0.4
        prog_i[:, field] = torch.where(used, torch.randint(0, max(num_cats, 1), (s,)), -1) if num_cats else -1
        prog_i[:, mask] = torch.randint(-(2**62), 2**62, (s,))
    prog_i[:, P.WIN_LO] = torch.where(torch.rand(s) < 0.5, day, 0)
    prog_i[:, P.WIN_HI] = torch.tensor([3 * day, 7 * day, P.NO_UPPER_BOUND])[torch.randint(0, 3, (s,))]
    prog_i[:, P.FLAGS] = torch.randint(0, 8, (s,)) if with_floats else 0
    prog_i[-1] = torch.tensor([0, -1, 0, -1, 0, -1, 0, 0, P.NO_UPPER_BOUND, 0])  # "all"
    prog_f[:, P.DWELL_LO] = torch.rand(s) * 20
    prog_f[:, P.DWELL_HI] = prog_f[:, P.DWELL_LO] + torch.rand(s) * 100
    prog_f[:, P.RATIO_LO] = torch.rand(s) * 0.5
    prog_f[:, P.RATIO_HI] = prog_f[:, P.RATIO_LO] + torch.rand(s) * 2
    if uniform:  # one BETA and one GAMMA for the whole program, as compiled specs have
        prog_f[:, P.BETA] = 0.7
        prog_f[:, P.GAMMA] = 1.3
    else:
        prog_f[:, P.BETA] = torch.tensor([0.0, 1.0, 0.7])[torch.randint(0, 3, (s,))]
        prog_f[:, P.GAMMA] = torch.rand(s) * 2
    prog_f[:, P.S0] = torch.rand(s) * 0.5
    to = lambda x: x.to(device)  # noqa: E731
    return (
        [to(t) for t in tables], [to(i) for i in ids], to(offsets), to(ts), to(cats), to(floats), to(request_ts),
        to(prog_i), to(prog_f),
    )


@pytest.mark.parametrize(
    "dtype, with_floats, num_cats, uniform",
    [
        (torch.float32, True, 3, False),
        (torch.float32, True, 3, True),
        (torch.float32, False, 0, False),
        (torch.float64, True, 2, False),
        (torch.bfloat16, True, 1, True),
    ],
)
def test_sliced_pool_matches_reference(device, dtype, with_floats, num_cats, uniform):
    args = _slicing_inputs(device, dtype, with_floats=with_floats, num_cats=num_cats, uniform=uniform)
    pooled, weight_sum = T.sliced_pool_triton(*args)
    ref_pooled, ref_weight_sum = reference.sliced_pool(*args)
    assert pooled.dtype == dtype and weight_sum.dtype == torch.float32
    assert_close(pooled, ref_pooled)
    assert_close(weight_sum, ref_weight_sum)


def test_sliced_pool_unknown_fields(device):
    # negative, NaN and infinite fields and a 1e-45 s duration, as a direct caller may pass them (program.py)
    args = list(_slicing_inputs(device, uniform=True, max_len=40))
    floats = args[5].clone()
    n = floats.shape[1]
    odd = torch.tensor([-1.0, float("nan"), float("inf"), 0.0, 1e-45, -0.0])
    floats[0] = torch.where(torch.rand(n, device=device) < 0.5, odd[torch.randint(0, 6, (n,))].to(device), floats[0])
    floats[1] = torch.where(torch.rand(n, device=device) < 0.3, odd[torch.randint(0, 6, (n,))].to(device), floats[1])
    args[5] = floats
    args[8][:, P.S0] = -1.0  # keep every scored event: the capped weights reach the pooled rows
    pooled, weight_sum = T.sliced_pool_triton(*args)
    ref_pooled, ref_weight_sum = reference.sliced_pool(*args)
    assert bool(torch.isfinite(pooled).all()) and bool(torch.isfinite(weight_sum).all())
    assert_close(pooled, ref_pooled)
    assert_close(weight_sum, ref_weight_sum)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sliced_pool_backward_matches_reference_autograd(device, dtype):
    # 19 slices over 2 tables: more than one slice block per table in the interpreter's blocks of 8
    tables, *rest = _slicing_inputs(device, dtype, s=19, d=19)
    grad = torch.randn(rest[1].numel() - 1, 19, 19, dtype=dtype, device=device)
    ref_tables = [t.detach().double().requires_grad_() for t in tables]
    reference.sliced_pool(ref_tables, *rest)[0].backward(grad.double())
    _, weight_sum = reference.sliced_pool(tables, *rest)
    dense = T.sliced_pool_backward_triton(grad, weight_sum, *rest, [t.shape[0] for t in tables])
    rows = T.sliced_pool_backward_rows_triton(grad, weight_sum, *rest)
    # the backward divides by the float32 weight_sum the forward returned: float32 accuracy at best
    tol = torch.float32 if dtype == torch.float64 else dtype
    for t, ids in enumerate(rest[0]):
        assert dense[t].dtype == rows[t].dtype == dtype and rows[t].shape == (ids.numel(), 19)
        assert_close(dense[t].double(), ref_tables[t].grad, tol)
        assert_close(torch.zeros_like(ref_tables[t].grad).index_add_(0, ids, rows[t].double()), ref_tables[t].grad, tol)


def test_sliced_pool_autograd_dense_and_sparse(device):
    tables, *rest = _slicing_inputs(device, torch.float32, b=3, s=6, d=5, max_len=12)
    tables = [t.requires_grad_() for t in tables]
    with _backend.use_backend("triton"):  # the backward ops resolve to their Triton kernels too
        pooled, weight_sum = T.sliced_pool_triton(tables, *rest)
        assert not weight_sum.requires_grad
        grad = torch.randn_like(pooled)
        dense = torch.autograd.grad(pooled, tables, grad)
        sparse = torch.autograd.grad(T.sliced_pool_triton(tables, *rest, True)[0], tables, grad)
    ref_tables = [t.detach().double().requires_grad_() for t in tables]
    # a table that no kept event reaches is not in the reference's graph: its gradient is zero
    expected = torch.autograd.grad(reference.sliced_pool(ref_tables, *rest)[0], ref_tables, grad.double(),
                                   allow_unused=True)
    expected = [torch.zeros_like(r) if e is None else e for e, r in zip(expected, ref_tables)]
    for a, b, e in zip(dense, sparse, expected):
        assert b.is_sparse
        assert_close(a, e.float())
        assert_close(b.to_dense(), e.float())


def test_sliced_pool_bad_inputs(device):
    tables, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f = _slicing_inputs(device, s=4, b=2, max_len=6)
    rest = (offsets, ts, cats, floats, request_ts, prog_i, prog_f)
    bad_ids = [ids[0], ids[1].clone().fill_(7)]
    if ts.numel():
        with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: ids\[1\]\[\d+\] = 7 is out of range for a table of 7 rows"):
            T.sliced_pool_triton(tables, bad_ids, *rest)
        with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: cats values must lie in \[0, 63\]"):
            T.sliced_pool_triton(tables, ids, offsets, ts, cats + 64, floats, request_ts, prog_i, prog_f)
    if ts.numel() > 1 and (offsets.diff() > 1).any():
        with pytest.raises(RuntimeError, match="dv365::sliced_pool: ts must be ascending within each user"):
            T.sliced_pool_triton(tables, ids, offsets, ts.flip(0), cats, floats, request_ts, prog_i, prog_f)
    bad_prog = prog_i.clone()
    bad_prog[0, P.TABLE] = 2
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: prog_i\[0, TABLE\] = 2 is out of range for 2 tables"):
        T.sliced_pool_triton(tables, ids, offsets, ts, cats, floats, request_ts, bad_prog, prog_f)
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: ids must hold one tensor per table \(1\), got 2"):
        T.sliced_pool_triton(tables[:1], ids, *rest)
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: prog_f must be a float64 tensor of shape \[S=4, 7\], got Float \[4, 7\]"):
        T.sliced_pool_triton(tables, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f.float())
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool_backward_rows: weight_sum must be a float32 (CPU )?tensor of shape \[B=2, S=4\]"):
        grad = torch.zeros(2, 4, 13, device=device)
        T.sliced_pool_backward_rows_triton(grad, torch.zeros(2, 3, device=device), ids, *rest)


# ---- backend selection, device rule


def test_backend_resolves_to_the_triton_ops(device):
    triton_ops = {name[: -len("_triton")] for name in dir(T) if name.endswith("_triton")}
    assert triton_ops == _backend.TRITON_OPS
    for op in sorted(_backend.TRITON_OPS):
        with _backend.use_backend("triton"):
            assert _backend.resolve(op, device) is getattr(T, f"{op}_triton")
        with _backend.use_backend("native"):
            assert _backend.resolve(op, device) is getattr(T, op)
    # ops without a Triton kernel run their compiled kernel under every backend
    for op in ("token_pool", "token_pool_backward", "slice_timeline"):
        with _backend.use_backend("triton"):
            assert _backend.resolve(op, device) is getattr(T, op)


def test_auto_backend_resolves_under_torch_compile():
    """torch.compile(fullgraph=True) traces the auto backend's choice for a CUDA device, which asks the dispatcher
    whether a compiled CUDA kernel exists (a query dynamo cannot trace: taken as a constant at trace time)."""
    cuda = torch.device("cuda")
    with _backend.use_backend("auto"):
        expected = _backend.resolve("sliced_pool", cuda)

        def f(x):
            return x + 1 if _backend.resolve("sliced_pool", cuda) is expected else x - 1

        torch._dynamo.reset()
        assert torch.compile(f, fullgraph=True)(torch.zeros(1)).item() == 1


def test_family_wrappers_run_the_triton_kernels(device):
    import dv365_ops

    args = _slicing_inputs(device, b=3, s=6, d=5, max_len=12)
    table, ids, offsets, weights = _jagged_inputs(device, d=5)
    with _backend.use_backend("triton"):
        assert_close(dv365_ops.sliced_pool(*args)[0], reference.sliced_pool(*args)[0])
        assert_close(dv365_ops.jagged_mean_pool(table, ids, offsets, weights),
                     reference.jagged_mean_pool(table, ids, offsets, weights))


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setattr(_util, "INTERPRET", False)
    with pytest.raises(RuntimeError, match="dv365::int4_quantize: the Triton kernels need CUDA tensors"):
        T.int4_quantize_triton(torch.randn(2, 4))


# ---- opcheck


def _sample_jagged(device):
    table, ids, offsets, weights = _jagged_inputs(device, d=5, rows=6, lengths=(2, 0, 3))
    return (table.requires_grad_(), ids, offsets, weights), {}


def _sample_jagged_backward(device):
    _, ids, offsets, weights = _jagged_inputs(device, d=5, rows=6, lengths=(2, 0, 3))
    return (torch.randn(3, 5, device=device), ids, offsets, weights, 6), {}


def _sample_jagged_backward_rows(device):
    args, _ = _sample_jagged_backward(device)
    return args[:4], {}


def _sample_int4_quantize(device):
    return (torch.randn(5, 6, device=device), True), {}


def _sample_int4_dequantize(device):
    return (reference.int4_quantize(torch.randn(5, 6, device=device)),), {"dtype": torch.float16}


def _small_slicing(device):
    return _slicing_inputs(device, b=2, s=5, d=4, max_len=8)


def _sample_sliced_pool(device):
    tables, *rest = _small_slicing(device)
    return ([t.requires_grad_() for t in tables], *rest), {}


def _sample_sliced_pool_backward(device):
    tables, *rest = _small_slicing(device)
    grad = torch.randn(rest[1].numel() - 1, 5, 4, device=device)
    return (grad, reference.sliced_pool(tables, *rest)[1], *rest, [t.shape[0] for t in tables]), {}


def _sample_sliced_pool_backward_rows(device):
    args, _ = _sample_sliced_pool_backward(device)
    return args[:-1], {}


OPCHECK_SAMPLES = {
    "jagged_mean_pool_triton": _sample_jagged,
    "jagged_mean_pool_backward_triton": _sample_jagged_backward,
    "jagged_mean_pool_backward_rows_triton": _sample_jagged_backward_rows,
    "int4_quantize_triton": _sample_int4_quantize,
    "int4_dequantize_triton": _sample_int4_dequantize,
    "sliced_pool_triton": _sample_sliced_pool,
    "sliced_pool_backward_triton": _sample_sliced_pool_backward,
    "sliced_pool_backward_rows_triton": _sample_sliced_pool_backward_rows,
}


@pytest.mark.parametrize("op_name", sorted(OPCHECK_SAMPLES))
def test_opcheck(device, op_name):
    args, kwargs = OPCHECK_SAMPLES[op_name](device)
    torch.library.opcheck(getattr(T, op_name).default, args, kwargs)
