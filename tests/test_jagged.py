"""dv365::jagged_mean_pool and its backward ops against dv365_ops.reference.jagged_mean_pool."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dv365_ops
from dv365_ops import reference
from dv365_ops.jagged import jagged_mean_pool
from tolerances import assert_close

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _jagged(lengths, num_rows, device, weighted=True, zero_frac=0.0, weight_dtype=torch.float32):
    lengths = torch.as_tensor(lengths, dtype=torch.int64)
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    n = int(offsets[-1])
    ids = torch.randint(0, max(num_rows, 1), (n,)) if num_rows else torch.zeros(0, dtype=torch.int64)
    weights = None
    if weighted:
        weights = torch.rand(n, dtype=torch.float64) * 2
        weights[torch.rand(n) < zero_frac] = 0
        weights = weights.to(weight_dtype).to(device)
    return ids.to(device), offsets.to(device), weights


def _random_lengths(m, max_len, empty_frac=0.2):
    lengths = torch.randint(0, max_len + 1, (m,))
    lengths[torch.rand(m) < empty_frac] = 0
    return lengths


def _reference_grads(table, ids, offsets, weights, grad):
    """Gradients of the reference, taken in float32 (float64 for float64) like the kernels accumulate."""
    acc = torch.float64 if table.dtype == torch.float64 else torch.float32
    t = table.detach().to(acc).requires_grad_()
    w = None
    if weights is not None:
        w = weights.detach().to(acc).requires_grad_(weights.requires_grad)
    reference.jagged_mean_pool(t, ids, offsets, w).backward(grad.to(acc))
    return t.grad.to(table.dtype), None if w is None or w.grad is None else w.grad.to(weights.dtype)




@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [1, 5, 123, 257])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_reference(device, dtype, D, weighted):
    table = torch.randn(97, D, dtype=dtype, device=device)
    ids, offsets, weights = _jagged(_random_lengths(37, 40), 97, device, weighted, zero_frac=0.1)
    out = jagged_mean_pool(table, ids, offsets, weights)
    assert out.dtype == dtype and out.shape == (37, D)
    assert_close(out, reference.jagged_mean_pool(table, ids, offsets, weights))


@pytest.mark.parametrize("dtype", DTYPES)
def test_weights_in_another_dtype(device, dtype):
    table = torch.randn(50, 7, dtype=torch.float32, device=device)
    ids, offsets, weights = _jagged(_random_lengths(9, 20), 50, device, weight_dtype=dtype)
    expected = reference.jagged_mean_pool(table, ids, offsets, weights)
    assert_close(jagged_mean_pool(table, ids, offsets, weights), expected)


def test_empty_and_zero_weight_bags_pool_to_zeros(device):
    table = torch.randn(10, 6, device=device)
    ids, offsets, weights = _jagged([0, 3, 0, 0, 4, 0], 10, device)
    weights[3:] = 0  # bag 4 (events 3..6) sums to 0
    out = jagged_mean_pool(table, ids, offsets, weights)
    assert torch.equal(out[[0, 2, 3, 4, 5]], torch.zeros(5, 6, device=device))
    assert_close(out, reference.jagged_mean_pool(table, ids, offsets, weights))


@pytest.mark.parametrize("weighted", [False, True])
def test_no_bags_and_no_events(device, weighted):
    table = torch.randn(4, 3, device=device)
    ids, offsets, weights = _jagged([], 4, device, weighted)
    assert jagged_mean_pool(table, ids, offsets, weights).shape == (0, 3)
    ids, offsets, weights = _jagged([0, 0, 0], 4, device, weighted)
    assert torch.equal(jagged_mean_pool(table, ids, offsets, weights), torch.zeros(3, 3, device=device))


def test_empty_table_and_zero_width(device):
    ids, offsets, _ = _jagged([0, 0], 0, device, weighted=False)
    assert jagged_mean_pool(torch.zeros(0, 4, device=device), ids, offsets).shape == (2, 4)
    ids, offsets, weights = _jagged([2, 1], 5, device)
    assert jagged_mean_pool(torch.zeros(5, 0, device=device), ids, offsets, weights).shape == (2, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_row_table_and_single_event(device, dtype):
    table = torch.randn(1, 5, dtype=dtype, device=device)
    ids, offsets, weights = _jagged([1], 1, device)
    assert_close(jagged_mean_pool(table, ids, offsets, weights), table)
    ids, offsets, weights = _jagged([3, 1, 0], 1, device)
    expected = reference.jagged_mean_pool(table, ids, offsets, weights)
    assert_close(jagged_mean_pool(table, ids, offsets, weights), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weighted", [False, True])
def test_long_bags(device, dtype, weighted):
    # one 70,000-event bag beside short ones: bags cut across thread ranges must be summed exactly once
    table = torch.randn(5000, 33, dtype=dtype, device=device)
    ids, offsets, weights = _jagged([70_000, 3, 0, 12_345, 1], 5000, device, weighted)
    out = jagged_mean_pool(table, ids, offsets, weights)
    assert_close(out, reference.jagged_mean_pool(table, ids, offsets, weights))
    grad = torch.randn_like(out)
    dense = torch.ops.dv365.jagged_mean_pool_backward(grad, ids, offsets, weights, 5000)
    assert_close(dense, _reference_grads(table, ids, offsets, weights, grad)[0])


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts(device, threads):
    # the kernels split events (forward, rows) and table rows (dense backward) into ranges per thread;
    # every split must give the same sums, including bags cut by several range boundaries
    lengths = torch.cat([torch.tensor([40_000, 0]), _random_lengths(300, 30), torch.tensor([9_000, 0])])
    table = torch.randn(3000, 70, device=device)
    ids, offsets, weights = _jagged(lengths, 3000, device, zero_frac=0.1)
    grad = torch.randn(lengths.numel(), 70, device=device)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = jagged_mean_pool(table, ids, offsets, weights)
        dense = torch.ops.dv365.jagged_mean_pool_backward(grad.bfloat16(), ids, offsets, weights, 3000)
        rows = torch.ops.dv365.jagged_mean_pool_backward_rows(grad, ids, offsets, weights)
    finally:
        torch.set_num_threads(previous)
    assert_close(out, reference.jagged_mean_pool(table, ids, offsets, weights))
    assert_close(dense, _reference_grads(table.bfloat16(), ids, offsets, weights, grad.bfloat16())[0])
    assert_close(torch.sparse_coo_tensor(ids[None], rows, (3000, 70), check_invariants=True).to_dense(),
                 _reference_grads(table, ids, offsets, weights, grad)[0])


def test_non_contiguous_inputs(device):
    wide = torch.randn(60, 40, device=device)
    _, offsets, _ = _jagged([5, 0, 17, 2, 9], 60, device)  # 33 events
    ids = torch.randint(0, 1000, (66,), device=device)[::2]
    weights = torch.rand(66, device=device)[::2]
    # a column slice (strided rows), the transpose (strided columns), both axes strided
    for table in (wide[:, 3:26], wide.t(), wide[::2, ::3]):
        assert not table.is_contiguous()
        ids_r = ids % table.shape[0]
        expected = reference.jagged_mean_pool(table.contiguous(), ids_r.contiguous(), offsets, weights.contiguous())
        assert_close(jagged_mean_pool(table, ids_r, offsets, weights), expected)
    grad = torch.randn(40, 5, device=device).t()
    assert not grad.is_contiguous()
    ids_r = ids % 60
    expected = torch.ops.dv365.jagged_mean_pool_backward(grad.contiguous(), ids_r, offsets, weights.contiguous(), 60)
    assert_close(torch.ops.dv365.jagged_mean_pool_backward(grad, ids_r, offsets, weights, 60), expected)
    expected = torch.ops.dv365.jagged_mean_pool_backward_rows(grad.contiguous(), ids_r, offsets, weights.contiguous())
    assert_close(torch.ops.dv365.jagged_mean_pool_backward_rows(grad, ids_r, offsets, weights), expected)




@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_backward_matches_reference_autograd(device, dtype, weighted):
    table = torch.randn(41, 19, dtype=dtype, device=device, requires_grad=True)
    ids, offsets, weights = _jagged(_random_lengths(23, 15), 41, device, weighted, zero_frac=0.1)
    if weighted:
        weights = weights.to(dtype).requires_grad_()
    out = jagged_mean_pool(table, ids, offsets, weights)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_table_grad, ref_weights_grad = _reference_grads(table, ids, offsets, weights, grad)
    assert_close(table.grad, ref_table_grad)
    if weighted:
        assert weights.grad.dtype == dtype
        assert_close(weights.grad, ref_weights_grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_grad_equals_dense_grad(device, dtype):
    ids, offsets, weights = _jagged(_random_lengths(17, 30), 29, device, zero_frac=0.1)
    grads = []
    for sparse in (False, True):
        table = torch.randn(29, 13, dtype=dtype, device=device, requires_grad=True)
        out = jagged_mean_pool(table, ids, offsets, weights, sparse=sparse)
        out.backward(torch.ones_like(out))
        assert table.grad.layout == (torch.sparse_coo if sparse else torch.strided)
        grads.append(table.grad.to_dense())
    assert_close(grads[1], grads[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_rows_formula(device, dtype):
    ids, offsets, weights = _jagged([4, 0, 7, 1], 11, device, zero_frac=0.2)
    grad = torch.randn(4, 9, dtype=dtype, device=device)
    rows = torch.ops.dv365.jagged_mean_pool_backward_rows(grad, ids, offsets, weights)
    bag = torch.repeat_interleave(torch.arange(4, device=device), offsets.diff())
    w = weights.double()
    den = torch.zeros(4, dtype=torch.float64, device=device).index_add_(0, bag, w)
    scale = torch.where(den[bag] > 0, w / den[bag], 0.0)
    assert rows.dtype == dtype
    assert_close(rows, (grad.double()[bag] * scale[:, None]).to(dtype))


class _Densify(torch.autograd.Function):
    """Identity whose backward densifies a sparse gradient, so gradcheck can check the sparse path."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.to_dense() if g.layout == torch.sparse_coo else g


@pytest.mark.parametrize("sparse", [False, True])
def test_gradcheck(sparse):
    ids, offsets, _ = _jagged([3, 0, 5, 1, 2], 7, "cpu", weighted=False)
    table = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    # positive weights: finite differences must not step a weight below 0 or into a zero-sum bag
    weights = (torch.rand(ids.numel(), dtype=torch.float64) + 0.5).requires_grad_()

    def pool(t, w):
        return jagged_mean_pool(_Densify.apply(t), ids, offsets, w, sparse=sparse)

    assert torch.autograd.gradcheck(pool, (table, weights))
    assert torch.autograd.gradcheck(lambda t: pool(t, None), (table,))
    with_zeros = weights.detach().clone()
    with_zeros[0] = 0
    with_zeros[-2:] = 0  # the last bag sums to 0
    assert torch.autograd.gradcheck(lambda t: pool(t, with_zeros), (table,))


def test_gradcheck_weights_only():
    ids, offsets, _ = _jagged([4, 2, 6], 9, "cpu", weighted=False)
    weights = torch.rand(12, dtype=torch.float64) + 0.5
    table = torch.randn(9, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda w: jagged_mean_pool(table, ids, offsets, w), (weights.requires_grad_(),))




def _forward_samples(device):
    ids, offsets, weights = _jagged([3, 0, 4, 1], 6, device)
    table = torch.randn(6, 5, device=device, requires_grad=True)
    return [
        (table, ids, offsets, weights, False),
        (table, ids, offsets, None, True),
        (table.detach().bfloat16(), ids, offsets, weights, False),
        (torch.randn(6, 3, dtype=torch.float64, device=device, requires_grad=True), ids, offsets,
         weights.double().requires_grad_(), False),
    ]


def _backward_samples(device):
    ids, offsets, weights = _jagged([3, 0, 4, 1], 6, device)
    grad = torch.randn(4, 5, device=device)
    return [(grad, ids, offsets, weights, 6), (grad.bfloat16(), ids, offsets, None, 11)]


def _backward_rows_samples(device):
    ids, offsets, weights = _jagged([3, 0, 4, 1], 6, device)
    grad = torch.randn(4, 5, device=device)
    return [(grad, ids, offsets, weights), (grad.half(), ids, offsets, None)]


OPCHECK_SAMPLES = {
    "jagged_mean_pool": _forward_samples,
    "jagged_mean_pool_backward": _backward_samples,
    "jagged_mean_pool_backward_rows": _backward_rows_samples,
}


@pytest.mark.parametrize("op_name", sorted(OPCHECK_SAMPLES))
def test_opcheck(device, op_name):
    for args in OPCHECK_SAMPLES[op_name](device):
        torch.library.opcheck(getattr(torch.ops.dv365, op_name), args)


class _SlicePooling(torch.nn.Module):
    """Pools one slice of each user's history and projects it, like one slice of the user tower input."""

    def __init__(self, num_rows: int, dim: int):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(num_rows, dim))
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, ids, offsets, weights):
        return self.proj(jagged_mean_pool(self.table, ids, offsets, weights)).relu()


@pytest.mark.compile
def test_compile_fullgraph(device):
    torch._dynamo.reset()
    model = _SlicePooling(50, 8).to(device)
    compiled = torch.compile(model, fullgraph=True)
    for lengths in ([3, 0, 5], [7, 1, 0, 2, 9]):
        ids, offsets, weights = _jagged(lengths, 50, device)
        out = compiled(ids, offsets, weights)
        assert_close(out, model(ids, offsets, weights))
        out.sum().backward()
        compiled_grad = model.table.grad.clone()
        model.zero_grad()
        model(ids, offsets, weights).sum().backward()
        assert_close(compiled_grad, model.table.grad)
        model.zero_grad()




@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(0, 12), min_size=0, max_size=20),
    num_rows=st.integers(1, 30),
    dim=st.integers(1, 20),
    weight_kind=st.sampled_from(["none", "positive", "some_zero", "all_zero"]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_property_matches_reference(lengths, num_rows, dim, weight_kind, dtype):
    ids, offsets, weights = _jagged(lengths, num_rows, "cpu", weight_kind != "none", zero_frac=0.4)
    if weight_kind == "all_zero":
        weights.zero_()
    table = torch.randn(num_rows, dim, dtype=dtype, requires_grad=True)
    out = jagged_mean_pool(table, ids, offsets, weights)
    assert_close(out, reference.jagged_mean_pool(table, ids, offsets, weights))
    grad = torch.randn_like(out)
    out.backward(grad)
    assert_close(table.grad, _reference_grads(table, ids, offsets, weights, grad)[0])
    rows = torch.ops.dv365.jagged_mean_pool_backward_rows(grad, ids, offsets, weights)
    seg = torch.repeat_interleave(torch.arange(len(lengths)), offsets.diff(), output_size=ids.numel())
    w = torch.ones(ids.numel(), dtype=torch.float64) if weights is None else weights.double()
    wsum = torch.zeros(len(lengths), dtype=torch.float64).index_add_(0, seg, w)
    scale = torch.where(wsum[seg] > 0, w / wsum[seg].clamp_min(1e-300), 0.0)
    assert_close(rows, (grad.double()[seg] * scale[:, None]).to(dtype))
    if dtype != torch.bfloat16:
        # a bf16 sparse gradient coalesces in bf16, a dense one accumulates in fp32: they agree only to
        # within the rounding of every duplicate row, which no fixed tolerance bounds
        sparse = torch.sparse_coo_tensor(ids[None], rows, (num_rows, dim), check_invariants=True).to_dense()
        assert_close(sparse, table.grad)




def _bad_cases(device):
    t = torch.randn(5, 3, device=device)
    ids = torch.tensor([0, 4, 2], device=device)
    off = torch.tensor([0, 1, 3], device=device)
    w = torch.ones(3, device=device)
    g = torch.randn(2, 3, device=device)
    fwd = torch.ops.dv365.jagged_mean_pool
    bwd = torch.ops.dv365.jagged_mean_pool_backward
    rows = torch.ops.dv365.jagged_mean_pool_backward_rows
    pre = "dv365::jagged_mean_pool: "
    pre_b = "dv365::jagged_mean_pool_backward: "
    pre_r = "dv365::jagged_mean_pool_backward_rows: "
    neg, nan, inf = (torch.tensor(v, device=device) for v in ([1, -0.5, 1], [1, float("nan"), 1], [float("inf"), 1, 1]))
    bad_ids = torch.tensor([0, 5, 1], device=device)
    # (call, message, whether the fake impl can see the error from metadata alone)
    return [
        (lambda: fwd(t[0], ids, off), pre + "table must be 2-D", True),
        (lambda: fwd(t.int(), ids, off), pre + "table must be float32", True),
        (lambda: fwd(t, ids.int(), off), pre + "ids must be int64", True),
        (lambda: fwd(t, ids[None], off), pre + "ids must be 1-D", True),
        (lambda: fwd(t, ids, off.int()), pre + "offsets must be int64", True),
        (lambda: fwd(t, ids, off[None]), pre + "offsets must be 1-D", True),
        (lambda: fwd(t, ids, off[:0]), pre + "offsets must have at least one element", True),
        (lambda: fwd(t, ids, torch.tensor([1, 1, 3], device=device)), pre + r"offsets\[0\] must be 0", False),
        (lambda: fwd(t, ids, torch.tensor([0, 2, 1, 3], device=device)), pre + "offsets must be non-decreas", False),
        (lambda: fwd(t, ids, off - off), pre + r"offsets\[-1\] must equal .* \(3\)", False),
        (lambda: fwd(t, bad_ids, off), pre + r"ids must be in \[0, 5\)", False),
        (lambda: fwd(t, torch.tensor([0, -1, 1], device=device), off), pre + r"ids must be in \[0, 5\)", False),
        (lambda: fwd(t, ids, off, w[:2]), pre + r"weights must have shape \[N\] = \[3\]", True),
        (lambda: fwd(t, ids, off, w.int()), pre + "weights must be float32", True),
        (lambda: fwd(t, ids, off, neg), pre + "weights must be finite and non-negative", False),
        (lambda: fwd(t, ids, off, nan), pre + "weights must be finite", False),
        (lambda: fwd(t, ids, off, inf), pre + "weights must be finite", False),
        (lambda: bwd(g[:1], ids, off, w, 5), pre_b + "grad must have one row per bag", True),
        (lambda: bwd(g, bad_ids, off, w, 5), pre_b + r"ids must be in \[0, 5\)", False),
        (lambda: bwd(g, ids, off, w, -1), pre_b + "num_rows must be non-negative", True),
        (lambda: bwd(g[0], ids, off, w, 5), pre_b + "grad must be 2-D", True),
        (lambda: rows(g, ids, off, -w), pre_r + "weights must be finite and non-negative", False),
        (lambda: rows(g[:1], ids, off[:2], w), pre_r + r"offsets\[-1\] must equal", False),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases("cpu"))))
def test_bad_inputs(device, case):
    fn, message, _ = _bad_cases(device)[case]
    with pytest.raises(RuntimeError, match=message):
        fn()


@pytest.mark.parametrize("case", [i for i, c in enumerate(_bad_cases("cpu")) if c[2]])
def test_fake_impls_check_metadata_with_the_same_messages(case):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fn, message, _ = _bad_cases("cpu")[case]
        with pytest.raises(RuntimeError, match=message):
            fn()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_devices_must_agree():
    t = torch.randn(5, 3, device="cuda")
    with pytest.raises(RuntimeError, match="dv365::jagged_mean_pool: ids must be on the same device"):
        torch.ops.dv365.jagged_mean_pool(t, torch.zeros(1, dtype=torch.int64), torch.tensor([0, 1], device="cuda"))


def test_public_wrapper_is_exported():
    assert dv365_ops.jagged_mean_pool is jagged_mean_pool
