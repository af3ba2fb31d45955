"""token_pool / token_pool_backward against dv365_ops.reference.token_pool (paper 2.3.2)."""

import pytest
import torch

import dv365_ops
from dv365_ops import reference as R
from tolerances import assert_close

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SIZES_N = [0, 1, 7, 200]


def _strides(n: int) -> list[int]:
    return sorted({1, 2, 3, max(n, 1), n + 5})


def _make(shape_lead, n, dtype, device, layout):
    """x [*lead, D=shape_lead[-1], n] in one of three layouts."""
    *b, d = shape_lead
    if layout == "contiguous":
        return torch.randn(*b, d, n, dtype=dtype, device=device)
    if layout == "token_major":  # the FSA's [B, N, D] activations seen as [B, D, N]
        return torch.randn(*b, n, d, dtype=dtype, device=device).transpose(-1, -2)
    return torch.randn(*b, d, 2 * n + 1, dtype=dtype, device=device)[..., 1::2]  # strided last axis


def _grad_reference(x: torch.Tensor, stride: int, grad: torch.Tensor) -> torch.Tensor:
    xr = x.detach().double().requires_grad_()
    R.token_pool(xr, stride).backward(grad.double())
    return xr.grad.to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES_N)
@pytest.mark.parametrize("layout", ["contiguous", "token_major", "strided"])
def test_forward_backward_match_reference(device, dtype, n, layout):
    for stride in _strides(n):
        x = _make((3, 5), n, dtype, device, layout).requires_grad_()
        out = dv365_ops.token_pool(x, stride)
        assert out.shape == (3, 5, -(-n // stride))
        assert_close(out, R.token_pool(x.detach(), stride))
        grad = torch.randn_like(out)
        out.backward(grad)
        assert x.grad.shape == x.shape
        assert_close(x.grad, _grad_reference(x, stride, grad), dtype)


@pytest.mark.parametrize("shape", [(7,), (4, 9), (2, 3, 4, 11)])
def test_any_rank(device, shape):
    x = torch.randn(shape, device=device)
    for stride in (1, 2, 4, 20):
        assert_close(dv365_ops.token_pool(x, stride), R.token_pool(x, stride))


def test_token_major_layout_is_kept(device):
    y = torch.randn(4, 200, 32, device=device)  # [B, N, D]
    out = dv365_ops.token_pool(y.transpose(1, 2), 2)
    assert out.shape == (4, 32, 100)
    assert out.transpose(1, 2).is_contiguous()  # zero-copy back to [B, n_out, D] for the next block
    assert_close(out, R.token_pool(y.transpose(1, 2), 2))
    assert dv365_ops.token_pool(y, 2).is_contiguous()


@pytest.mark.parametrize("layout", ["contiguous", "token_major"])
def test_bfloat16_rounds_as_torch_does(device, layout):
    # the CPU kernels round float sums to bfloat16 with their own vectorizable bit arithmetic: the same bits as
    # torch's conversion, ties to even included (1 and 1 + 2^-7 average to a tie that rounds down to 1; 1 + 2^-7
    # and 1 + 2^-6 to one that rounds up), and inf; a NaN stays a NaN (its payload bits are not compared: torch's
    # own conversions disagree on them)
    y = torch.randn(3, 64, 40, device=device).bfloat16()  # [B, N, D]
    specials = torch.tensor([1.0, 1.0078125, 1.0078125, 1.015625, float("nan"), 2.0, float("inf"), 1.0])
    y[0, :8, 0] = specials.bfloat16().to(device)
    x = y.transpose(1, 2) if layout == "token_major" else y.transpose(1, 2).contiguous()
    for stride in (2, 3, 4):
        out, ref = dv365_ops.token_pool(x, stride), R.token_pool(x, stride)
        nan = ref.isnan()
        assert torch.equal(out.isnan(), nan) and nan.any(), stride
        assert torch.equal(out.view(torch.int16)[~nan], ref.view(torch.int16)[~nan]), stride
    # both ties went to the even neighbour: down to 1, up to 1 + 2^-6
    assert dv365_ops.token_pool(x, 2)[0, 0, :4].float().tolist()[:2] == [1.0, 1.015625]


def test_last_window_averages_what_it_has(device):
    x = torch.arange(7.0, device=device).reshape(1, 7)
    assert dv365_ops.token_pool(x, 3).tolist() == [[1.0, 4.0, 6.0]]
    assert dv365_ops.token_pool(x, 12).tolist() == [[3.0]]


@pytest.mark.parametrize("layout", ["contiguous", "token_major", "strided"])
def test_gradcheck(layout):
    for n, stride in [(7, 3), (6, 2), (5, 9), (1, 1)]:
        x = _make((2, 3), n, torch.float64, "cpu", layout).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: dv365_ops.token_pool(t, stride), (x,))


def test_bad_inputs():
    x = torch.randn(2, 3, 5)
    with pytest.raises(RuntimeError, match=r"dv365::token_pool: stride must be >= 1"):
        dv365_ops.token_pool(x, 0)
    with pytest.raises(RuntimeError, match=r"dv365::token_pool: x must have at least 1 dimension"):
        dv365_ops.token_pool(torch.tensor(1.0), 2)
    with pytest.raises(RuntimeError, match=r"dv365::token_pool: x must be float32, float64, bfloat16 or float16"):
        dv365_ops.token_pool(torch.ones(2, 4, dtype=torch.int64), 2)
    g = torch.randn(2, 3, 3)
    with pytest.raises(RuntimeError, match=r"dv365::token_pool_backward: stride must be >= 1"):
        torch.ops.dv365.token_pool_backward(g, 0, 5)
    with pytest.raises(RuntimeError, match=r"dv365::token_pool_backward: grad must have ceil\(n / stride\) = 2"):
        torch.ops.dv365.token_pool_backward(g, 3, 5)
    with pytest.raises(RuntimeError, match=r"dv365::token_pool_backward: n must be >= 0"):
        torch.ops.dv365.token_pool_backward(g, 2, -1)


def _samples_token_pool(device):
    return [
        (torch.randn(3, 4, 7, device=device, requires_grad=True), 2),
        (torch.randn(2, 9, 4, device=device).transpose(1, 2).requires_grad_(), 3),
        (torch.randn(5, device=device, requires_grad=True), 8),
        (torch.randn(2, 3, 0, device=device, requires_grad=True), 2),
    ]


def _samples_token_pool_backward(device):
    return [
        (torch.randn(3, 4, 4, device=device), 2, 7),
        (torch.randn(2, 3, 4, device=device).transpose(1, 2), 3, 9),
        (torch.randn(5, 1, device=device), 8, 5),
    ]


OPCHECK_SAMPLES = {
    "token_pool": _samples_token_pool,
    "token_pool_backward": _samples_token_pool_backward,
}


@pytest.mark.parametrize("op_name", sorted(OPCHECK_SAMPLES))
def test_opcheck(device, op_name):
    for args in OPCHECK_SAMPLES[op_name](device):
        torch.library.opcheck(getattr(torch.ops.dv365, op_name).default, args)


class _Funnel(torch.nn.Module):
    """Two funnel steps: [B, N, D] -> pool tokens by 2 -> linear -> pool by 2."""

    def __init__(self, d: int):
        super().__init__()
        self.proj = torch.nn.Linear(d, d)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = dv365_ops.token_pool(y.transpose(1, 2), 2).transpose(1, 2)
        y = torch.relu(self.proj(y))
        return dv365_ops.token_pool(y.transpose(1, 2), 2)


@pytest.mark.compile
def test_torch_compile_fullgraph(device):
    model = _Funnel(16).to(device)
    compiled = torch.compile(model, fullgraph=True)
    for n in (40, 37):
        y = torch.randn(3, n, 16, device=device, requires_grad=True)
        out = compiled(y)
        expected = model(y)
        assert_close(out, expected)
        (g,) = torch.autograd.grad(out.square().sum(), y)
        (g_ref,) = torch.autograd.grad(expected.square().sum(), y)
        assert_close(g, g_ref)


def test_baseline_isa_copy_matches_reference():
    """The kernels' baseline (SSE2) copy, forced with DV365_CPU_BASELINE=1, matches the reference too."""
    import os
    import subprocess
    import sys

    script = (
        "import torch, dv365_ops\n"
        "from dv365_ops import reference as R\n"
        "for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):\n"
        "    for x in (torch.randn(3, 9, 37, dtype=dt), torch.randn(3, 37, 9, dtype=dt).transpose(1, 2)):\n"
        "        for s in (1, 2, 3, 40):\n"
        "            torch.testing.assert_close(dv365_ops.token_pool(x, s), R.token_pool(x, s), atol=1e-2, rtol=1.6e-2)\n"
        "            g = torch.randn_like(R.token_pool(x, s))\n"
        "            xr = x.detach().double().clone().requires_grad_()\n"
        "            R.token_pool(xr, s).backward(g.double())\n"
        "            gx = torch.ops.dv365.token_pool_backward(g, s, 37)\n"
        "            torch.testing.assert_close(gx, xr.grad.to(dt), atol=1e-2, rtol=1.6e-2)\n"
    )
    env = dict(os.environ, DV365_CPU_BASELINE="1")
    subprocess.run([sys.executable, "-c", script], check=True, env=env)


@pytest.mark.parametrize("stride", [2**31, 2**32 + 1, 2**63 - 1])
def test_stride_beyond_32_bits_pools_the_whole_row(device, stride):
    # a stride past N is one window of the whole row; the CUDA kernels take 32-bit strides where indices fit
    x = torch.randn(3, 5, 37, device=device, requires_grad=True)
    out = dv365_ops.token_pool(x, stride)
    assert out.shape == (3, 5, 1)
    assert_close(out, x.detach().mean(-1, keepdim=True))
    out.sum().backward()
    assert_close(x.grad, torch.full_like(x, 1 / 37))
