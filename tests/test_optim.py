"""RowWiseAdagrad's fused sparse update (every sparse table of a step in one Triton launch per dtype and width,
nothing read back from the device) against the same optimizer's torch ops (``fused=False``), on fresh random data.

On a machine without CUDA the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest)."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

from dv365.train import _adagrad_triton  # noqa: E402
from dv365.train.optim import RowWiseAdagrad  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter",
                                        "ignore:Sparse invariant checks:UserWarning")


@pytest.fixture
def device():
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton kernel runs on the CPU only under TRITON_INTERPRET=1")
    return torch.device("cpu")


def _coo(idx, vals, shape, coalesced=False):
    return torch.sparse_coo_tensor(idx[None], vals, shape, is_coalesced=coalesced, check_invariants=False)


def _pair(tables, groups):
    """The same tables twice, one optimizer fused and one the torch ops; ``groups`` maps a table's name to its
    param group (lr, eps, weight_decay)."""
    copies = {}
    for fused in (True, False):
        ps = {name: torch.nn.Parameter(t.clone()) for name, t in tables.items()}
        param_groups = [{"params": [ps[n] for n in names], **hyper} for names, hyper in groups]
        copies[fused] = (ps, RowWiseAdagrad(param_groups, fused=fused))
    return copies


def _check(copies, tables, dtype_of):
    (fp, fo), (tp, to) = copies[True], copies[False]
    for name, start in tables.items():
        dtype = dtype_of(name)
        fa, ta = fo.state[fp[name]].get("sum"), to.state[tp[name]].get("sum")
        if ta is None:  # a table whose gradients were all empty: not updated
            assert torch.equal(fp[name].detach(), start), name
            continue
        torch.testing.assert_close(fa, ta, rtol=2e-2 if dtype == torch.bfloat16 else 2e-6, atol=0, msg=name)
        tol = {torch.float32: (2e-6, 1e-6), torch.float64: (2e-6, 1e-6), torch.bfloat16: (3 * 2**-7, 1e-2)}[dtype]
        torch.testing.assert_close(fp[name].detach(), tp[name].detach(), rtol=tol[0], atol=tol[1], msg=name)
        untouched = ta == 0
        assert torch.equal(fa[untouched], ta[untouched]), name
        assert torch.equal(fp[name].detach()[untouched], start[untouched]), name


def test_sparse_update_matches_the_torch_ops_for_mixed_tables(device):
    """One optimizer, two param groups (one with weight decay), tables of several dtypes and widths: two sharing
    one sorted unique index tensor (the pooling op's gradients, their coalesced flag dropped), one flagged
    coalesced, one with its own rows, an ``nn.Embedding``-like one with repeated unsorted rows whose runs cross
    the kernel's row blocks, one with an empty gradient, one whose values have a column stride."""
    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    spec = {  # name: (rows, D, dtype)
        "a": (300, 37, torch.float32), "b": (300, 37, torch.float32), "flag": (200, 37, torch.float32),
        "own": (500, 64, torch.float32), "rep": (12, 37, torch.float32), "empty": (50, 37, torch.float32),
        "strided": (90, 5, torch.float32), "f64": (70, 19, torch.float64), "bf16": (80, 16, torch.bfloat16),
        "wd": (150, 33, torch.float32), "wd_rep": (9, 33, torch.float32),
    }
    tables = {n: torch.randn(r, d, generator=g).to(device, dt) for n, (r, d, dt) in spec.items()}
    groups = [([n for n in spec if not n.startswith("wd")], {"lr": 0.07, "eps": 1e-10, "weight_decay": 0.0}),
              (["wd", "wd_rep"], {"lr": 0.03, "eps": 1e-8, "weight_decay": 0.05})]
    copies = _pair(tables, groups)

    def values(n, k):
        return (torch.randn(k, spec[n][1], generator=g) * 3).to(device, spec[n][2])

    def rows(n, k, unique=False):  # k random rows of table n (sorted and unique: its touched rows)
        idx = torch.randint(0, spec[n][0], (k,), generator=g)
        return (torch.unique(idx) if unique else idx).to(device)

    for _ in range(3):
        shared, own, flag = rows("a", 150, unique=True), rows("own", 90, unique=True), rows("flag", 80, unique=True)
        grads = {
            "a": _coo(shared, values("a", shared.numel()), (300, 37)),
            "b": _coo(shared, values("b", shared.numel()), (300, 37)),
            "flag": _coo(flag, values("flag", flag.numel()), (200, 37), coalesced=True),
            "own": _coo(own, values("own", own.numel()), (500, 64)),
            "rep": _coo(rows("rep", 200), values("rep", 200), (12, 37)),
            "empty": _coo(rows("empty", 0), values("empty", 0), (50, 37)),
            # column stride 30
            "strided": _coo(rows("strided", 30), (torch.randn(5, 30, generator=g) * 3).to(device).t(), (90, 5)),
            "f64": _coo(rows("f64", 60), values("f64", 60), (70, 19)),
            "bf16": _coo(rows("bf16", 50), values("bf16", 50), (80, 16)),
            "wd": _coo(torch.randperm(150, generator=g)[:40].to(device), values("wd", 40), (150, 33)),
            "wd_rep": _coo(rows("wd_rep", 70), values("wd_rep", 70), (9, 33)),
        }
        assert grads["strided"]._values().stride(1) != 1
        assert grads["a"]._indices().data_ptr() == grads["b"]._indices().data_ptr()
        for fused in (True, False):
            ps, opt = copies[fused]
            for n, gr in grads.items():
                ps[n].grad = gr
            opt.step()
    _check(copies, tables, lambda n: spec[n][2])


@pytest.mark.parametrize("case", ["coalesced flag", "sorted unique, no flag", "repeated rows", "long runs"])
def test_sparse_update_matches_the_torch_ops_per_gradient_kind(device, case):
    rows, dim = 64, 8
    table = torch.randn(rows, dim, device=device)
    copies = _pair({"t": table}, [(["t"], {"lr": 0.1, "eps": 1e-10, "weight_decay": 0.0})])
    for _ in range(3):
        if case in ("coalesced flag", "sorted unique, no flag"):
            idx = torch.unique(torch.randint(0, rows, (40,))).to(device)
        elif case == "repeated rows":
            idx = torch.randint(0, rows, (100,)).to(device)
        else:  # runs of ~50 equal rows, each across several of the kernel's 16-row blocks
            idx = torch.randint(0, 3, (150,)).to(device)
        vals = torch.randn(idx.numel(), dim, device=device)
        for fused in (True, False):
            ps, opt = copies[fused]
            ps["t"].grad = _coo(idx, vals, (rows, dim), coalesced=case == "coalesced flag")
            opt.step()
    _check(copies, {"t": table}, lambda n: torch.float32)


def test_sparse_update_is_one_launch_per_dtype_and_width(device, monkeypatch):
    """15 tables on 6 shared index tensors (the default spec's shape) and 2 of another width: 2 launches."""
    launches = []
    kernel = _adagrad_triton._sparse_rowwise_adagrad_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    monkeypatch.setattr(_adagrad_triton, "_sparse_rowwise_adagrad_kernel", Counting())
    columns = [torch.unique(torch.randint(0, 100, (30,))).to(device) for _ in range(6)]
    ps = [torch.nn.Parameter(torch.randn(100, 24, device=device)) for _ in range(15)]
    emb = [torch.nn.Parameter(torch.randn(10, 4, device=device)) for _ in range(2)]
    for i, p in enumerate(ps):
        p.grad = _coo(columns[i % 6], torch.randn(columns[i % 6].numel(), 24, device=device), (100, 24))
    for p in emb:
        p.grad = _coo(torch.randint(0, 10, (7,), device=device), torch.randn(7, 4, device=device), (10, 4))
    RowWiseAdagrad(ps + emb, lr=0.1, fused=True).step()
    assert len(launches) == 2, launches


def test_fused_sparse_step_reads_nothing_back(device, monkeypatch):
    """The fused sparse step decides everything from the tensors' shapes and addresses: a read of a tensor's
    value (``tolist``, ``item``, ``bool``/``int``/``float`` of a tensor) raises here, and on CUDA any call that
    synchronizes the device (``torch.cuda.set_sync_debug_mode("error")``). The torch-ops path does read (it checks
    whether the indices are sorted), which shows the check can fail."""
    # on CUDA more entries than torch.sort sorts in place, so that its radix sort (cub) runs too
    rows, n = (50_000, 20_000) if device.type == "cuda" else (9, 5)

    def params():
        ps = [torch.nn.Parameter(torch.randn(rows, 6, device=device)) for _ in range(2)]
        idx = torch.randint(0, rows, (n,), device=device)  # one index tensor for both, repeated rows
        for p in ps:
            p.grad = _coo(idx, torch.randn(n, 6, device=device), (rows, 6))
        return ps

    fused, plain = RowWiseAdagrad(params(), fused=True), RowWiseAdagrad(params(), fused=False)
    fused.step()  # compile (or interpret) once before the reads are forbidden
    idx = torch.randint(0, rows, (n,), device=device)
    for group in fused.param_groups:
        for p in group["params"]:
            p.grad = _coo(idx, torch.randn(n, 6, device=device), (rows, 6))

    def forbidden(*args, **kwargs):
        raise AssertionError("RowWiseAdagrad.step read a tensor's value back")

    with monkeypatch.context() as m:
        for name in ("tolist", "item", "__bool__", "__int__", "__float__", "__index__"):
            m.setattr(torch.Tensor, name, forbidden)
        if device.type == "cuda":  # and torch's own synchronizing calls raise too
            torch.cuda.set_sync_debug_mode("error")
        try:
            fused.step()
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        with pytest.raises(AssertionError, match="read a tensor's value back"):
            plain.step()


def test_fused_step_still_takes_dense_gradients(device):
    table = torch.randn(40, 10, device=device)
    copies = _pair({"t": table}, [(["t"], {"lr": 0.05, "eps": 1e-10, "weight_decay": 0.01})])
    for _ in range(2):
        grad = torch.randn(40, 10, device=device)
        for fused in (True, False):
            ps, opt = copies[fused]
            ps["t"].grad = grad.clone()
            opt.step()
    _check(copies, {"t": table}, lambda n: torch.float32)


_COMPILE_SM90 = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from dv365.train import _adagrad_triton
signature = {"meta": "*i64", "keys": "*i32", "order": "*i64", "T": "i32", "lr": "fp32", "eps": "fp32", "wd": "fp32",
             **{k: "constexpr" for k in ("W_TY", "G_TY", "HAS_WD", "F64", "BLOCK_T", "BLOCK_R", "BLOCK_D")}}
for w_ty, wd in ((tl.float32, False), (tl.bfloat16, True)):
    src = triton.compiler.ASTSource(
        fn=_adagrad_triton._sparse_rowwise_adagrad_kernel, signature=signature,
        constexprs={"W_TY": w_ty, "G_TY": w_ty, "HAS_WD": wd, "F64": False, "BLOCK_T": 16, "BLOCK_R": 16,
                    "BLOCK_D": 256})
    assert triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False}).asm["cubin"]
"""


def test_sparse_kernel_compiles_for_sm90(tmp_path):
    """The interpreter does not compile: build the kernel for an H100 (sm_90) with Triton's own compiler and
    ptxas, which need no GPU, so that a kernel the GPU would reject fails here first. In a fresh process without
    the interpreter (which patches triton.language in this one) and with an empty cache (a cached build of an
    older source must not pass for this one)."""
    import subprocess
    import sys

    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:
        pytest.skip("Triton without its NVIDIA backend")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", _COMPILE_SM90], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
