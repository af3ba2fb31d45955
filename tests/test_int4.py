"""int4_quantize / int4_dequantize: byte-identical to dv365_ops.reference (and, for the half variant, to
fbgemm's FloatToFusedNBitRowwiseQuantizedSBHalf); docs/design.md#int4-rows."""

import pytest
import torch

import dv365_ops
from dv365_ops import reference as R
from tolerances import assert_close

try:
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)

    HAS_FBGEMM = hasattr(torch.ops.fbgemm, "FloatToFusedNBitRowwiseQuantizedSBHalf")
except ImportError:
    HAS_FBGEMM = False

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
OUT_DTYPES = [None, torch.float32, torch.bfloat16, torch.float16]
ROWS = [0, 1, 123]
COLS = [0, 2, 8, 30, 256, 258]


def _rows(r: int, d: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Random rows over a spread of magnitudes, plus a constant row (scale 0) and a two-valued one."""
    x = torch.randn(r, d, device=device) * 10.0 ** torch.randint(-3, 4, (r, 1), device=device)
    x += torch.randn(r, 1, device=device) * 10.0 ** torch.randint(-3, 3, (r, 1), device=device)
    if r > 2:
        x[1] = 0.37
        x[2] = torch.where(torch.rand(d, device=device) < 0.5, -1.0, 2.0)
    return x.to(dtype)


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("r", ROWS)
@pytest.mark.parametrize("d", COLS)
def test_matches_reference_bytes(device, half, dtype, r, d):
    x = _rows(r, d, dtype, device)
    packed = dv365_ops.int4_quantize(x, half_scale_bias=half)
    assert packed.dtype == torch.uint8 and packed.shape == (r, d // 2 + (4 if half else 8))
    assert torch.equal(packed, R.int4_quantize(x, half))
    for out_dtype in OUT_DTYPES:
        y = dv365_ops.int4_dequantize(packed, half_scale_bias=half, dtype=out_dtype)
        assert y.dtype == (out_dtype or torch.float32) and y.shape == (r, d)
        assert torch.equal(y, R.int4_dequantize(packed, half, out_dtype))


@pytest.mark.parametrize("half", [False, True])
def test_non_contiguous_inputs(device, half):
    wide = _rows(123, 300, torch.float32, device)
    for x in (wide[:, 10:266], wide[::2, :256], wide[:40, :258].t()):
        packed = dv365_ops.int4_quantize(x, half_scale_bias=half)
        assert torch.equal(packed, R.int4_quantize(x, half))
        padded = torch.zeros(packed.shape[0], packed.shape[1] + 3, dtype=torch.uint8, device=device)
        padded[:, 1 : 1 + packed.shape[1]] = packed
        view = padded[:, 1 : 1 + packed.shape[1]]
        assert torch.equal(dv365_ops.int4_dequantize(view, half_scale_bias=half), R.int4_dequantize(packed, half))
        strided = packed.t().contiguous().t()
        assert torch.equal(dv365_ops.int4_dequantize(strided, half_scale_bias=half), R.int4_dequantize(packed, half))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fp32_reconstruction_within_half_a_step(device, dtype):
    x = _rows(123, 256, dtype, device).float()
    packed = dv365_ops.int4_quantize(x)
    scale, bias = packed[:, 128:].contiguous().view(torch.float32).unbind(1)
    err = (dv365_ops.int4_dequantize(packed) - x).abs()
    # float32 rounding of (x - bias) * (1 / scale) and of q * scale + bias: a few ulps of the row's magnitude
    slack = 4 * torch.finfo(torch.float32).eps * (bias.abs() + 15 * scale)
    assert bool((err <= (scale / 2 + slack)[:, None]).all())
    assert torch.equal(bias, x.amin(1))


def test_half_reconstruction_bound(device):
    x = _rows(123, 256, torch.float32, device)
    packed = dv365_ops.int4_quantize(x, half_scale_bias=True)
    scale, bias = packed[:, 128:].contiguous().view(torch.float16).float().unbind(1)
    mn, mx = x.amin(1), x.amax(1)
    # fp16 rounding moves the bias off the min and the scale off (max - bias) / 15; the codes absorb neither
    bound = scale / 2 + (bias - mn).abs() + 15 * ((mx - bias) / 15 - scale).abs()
    slack = 4 * torch.finfo(torch.float32).eps * (mn.abs() + mx.abs())
    err = (dv365_ops.int4_dequantize(packed, half_scale_bias=True) - x).abs()
    assert bool((err <= (bound + slack)[:, None]).all())


def test_constant_row_is_exact(device):
    x = torch.full((3, 8), -2.5, device=device)
    packed = dv365_ops.int4_quantize(x)
    assert packed[:, :4].eq(0).all()
    assert torch.equal(dv365_ops.int4_dequantize(packed), x)


def test_row_by_hand():
    x = torch.tensor([[0.0, 15.0, 7.0, 8.0, 7.5, 8.5]])  # scale 1, bias 0; 7.5 and 8.5 round half to even
    packed = dv365_ops.int4_quantize(x)
    assert packed[0, :3].tolist() == [0xF0, 0x87, 0x88]
    assert packed[0, 3:].clone().view(torch.float32).tolist() == [1.0, 0.0]


@pytest.mark.skipif(not HAS_FBGEMM, reason="fbgemm_gpu not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("r", ROWS)
@pytest.mark.parametrize("d", [4, 8, 32, 256, 260])  # fbgemm wants D/2 + 4 even
def test_half_variant_matches_fbgemm(dtype, r, d):
    x = _rows(r, d, dtype, "cpu")
    ours = dv365_ops.int4_quantize(x, half_scale_bias=True)
    # FloatToFusedNBitRowwiseQuantizedSBHalf reads any input as float32; this one dispatches on the dtype
    theirs = torch.ops.fbgemm.FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf(x, 4)
    if dtype == torch.float32:
        assert torch.equal(theirs, torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(x, 4))
    assert torch.equal(ours, theirs)
    assert torch.equal(R.int4_quantize(x, True), theirs)
    # fbgemm's AVX2 dequantize uses a fused multiply-add, so it may differ from q * scale + bias by an ulp
    fb = torch.ops.fbgemm.FusedNBitRowwiseQuantizedSBHalfToFloat(theirs, 4)
    assert_close(dv365_ops.int4_dequantize(ours, half_scale_bias=True), fb, torch.float32)


def test_int64_views():
    x = torch.randn(58, 256)
    packed = dv365_ops.int4_quantize(x)
    assert packed.shape == (58, 136)
    words = dv365_ops.as_int64(packed)
    assert words.shape == (58, 17) and words.dtype == torch.int64
    assert words.data_ptr() == packed.data_ptr()
    back = dv365_ops.from_int64(words)
    assert back.data_ptr() == packed.data_ptr() and torch.equal(back, packed)
    assert torch.equal(dv365_ops.int4_dequantize(dv365_ops.from_int64(words.clone())), dv365_ops.int4_dequantize(packed))
    with pytest.raises(ValueError, match=r"dv365_ops.as_int64: packed row width must be a multiple of 8 bytes, got 12"):
        dv365_ops.as_int64(dv365_ops.int4_quantize(torch.randn(3, 16), half_scale_bias=True))
    with pytest.raises(ValueError, match=r"dv365_ops.as_int64: packed must be 2-D uint8"):
        dv365_ops.as_int64(torch.zeros(2, 8))
    with pytest.raises(ValueError, match=r"dv365_ops.from_int64: codes must be 2-D int64"):
        dv365_ops.from_int64(torch.zeros(2, 8))


def test_not_differentiable():
    x = torch.randn(4, 8, requires_grad=True)
    y = dv365_ops.int4_dequantize(dv365_ops.int4_quantize(x))
    assert not y.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_bad_inputs():
    with pytest.raises(RuntimeError, match=r"dv365::int4_quantize: x must be finite"):
        dv365_ops.int4_quantize(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(RuntimeError, match=r"dv365::int4_quantize: x must be finite"):
        dv365_ops.int4_quantize(torch.tensor([[0.0, 1.0], [float("-inf"), 2.0]]), half_scale_bias=True)
    with pytest.raises(RuntimeError, match=r"dv365::int4_quantize: x must have an even number of columns D"):
        dv365_ops.int4_quantize(torch.randn(3, 5))
    with pytest.raises(RuntimeError, match=r"dv365::int4_quantize: x must be 2-D"):
        dv365_ops.int4_quantize(torch.randn(3, 4, 2))
    with pytest.raises(RuntimeError, match=r"dv365::int4_quantize: x must be float32, bfloat16 or float16"):
        dv365_ops.int4_quantize(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"dv365::int4_dequantize: packed must be uint8"):
        dv365_ops.int4_dequantize(torch.zeros(3, 12, dtype=torch.int8))
    with pytest.raises(RuntimeError, match=r"dv365::int4_dequantize: packed must be 2-D"):
        dv365_ops.int4_dequantize(torch.zeros(12, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match=r"dv365::int4_dequantize: packed must have D/2 code bytes plus 8"):
        dv365_ops.int4_dequantize(torch.zeros(3, 6, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match=r"dv365::int4_dequantize: packed must have D/2 code bytes plus 4"):
        dv365_ops.int4_dequantize(torch.zeros(3, 3, dtype=torch.uint8), half_scale_bias=True)
    with pytest.raises(RuntimeError, match=r"dv365::int4_dequantize: dtype must be float32, bfloat16 or float16"):
        dv365_ops.int4_dequantize(torch.zeros(3, 12, dtype=torch.uint8), dtype=torch.float64)


def _samples_int4_quantize(device):
    return [
        (torch.randn(5, 8, device=device),),
        (torch.randn(3, 256, device=device, dtype=torch.bfloat16), True),
        (torch.randn(0, 4, device=device),),
        (torch.randn(16, 7, device=device)[:, :6].t(), False),
    ]


def _samples_int4_dequantize(device):
    x = torch.randn(5, 16, device=device)
    return [
        (R.int4_quantize(x),),
        (R.int4_quantize(x, True), True, torch.float16),
        (R.int4_quantize(x), False, torch.bfloat16),
        (torch.zeros(0, 12, dtype=torch.uint8, device=device),),
    ]


OPCHECK_SAMPLES = {
    "int4_quantize": _samples_int4_quantize,
    "int4_dequantize": _samples_int4_dequantize,
}


@pytest.mark.parametrize("op_name", sorted(OPCHECK_SAMPLES))
def test_opcheck(device, op_name):
    for args in OPCHECK_SAMPLES[op_name](device):
        torch.library.opcheck(getattr(torch.ops.dv365, op_name).default, args)


class _ExportRoundTrip(torch.nn.Module):
    """User tower output -> int4 codes (export) -> dequantized rows (serving), in one graph."""

    def __init__(self, d: int):
        super().__init__()
        self.proj = torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = dv365_ops.int4_quantize(self.proj(x))
        return codes, dv365_ops.int4_dequantize(codes, dtype=torch.bfloat16)


@pytest.mark.compile
def test_torch_compile_fullgraph(device):
    model = _ExportRoundTrip(32).to(device)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        for r in (58, 13):
            x = torch.randn(r, 32, device=device)
            codes, rows = compiled(x)
            ref_codes, ref_rows = model(x)
            assert torch.equal(codes, ref_codes)
            assert torch.equal(rows, ref_rows)


def test_baseline_isa_copy_matches_reference():
    """The kernels' baseline (SSE2) copy, forced with DV365_CPU_BASELINE=1, is byte-identical too."""
    import os
    import subprocess
    import sys

    script = (
        "import torch, dv365_ops\n"
        "from dv365_ops import reference as R\n"
        "for dt in (torch.float32, torch.bfloat16, torch.float16):\n"
        "    x = (torch.randn(123, 258) * 10.0 ** torch.randint(-3, 4, (123, 1))).to(dt)\n"
        "    for h in (False, True):\n"
        "        p = dv365_ops.int4_quantize(x, half_scale_bias=h)\n"
        "        assert torch.equal(p, R.int4_quantize(x, h)), (dt, h)\n"
        "        assert torch.equal(dv365_ops.int4_dequantize(p, half_scale_bias=h), R.int4_dequantize(p, h))\n"
    )
    env = dict(os.environ, DV365_CPU_BASELINE="1")
    subprocess.run([sys.executable, "-c", script], check=True, env=env)


# ---- edge cases: signed zeros, denormal and overflowing ranges (docs/design.md#int4-rows)


def _signed_zero_rows(d: int, dtype: torch.dtype, device, seed: int = 0) -> torch.Tensor:
    """Rows whose minimum is 0 held as both -0.0 and +0.0 in varied places (plus all -0 and all +0 rows)."""
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([0.0, -0.0, 0.5, 1.0, 2.0])
    x = values[torch.randint(0, len(values), (40, d), generator=g)]
    x[0], x[1] = -0.0, 0.0
    x[2] = torch.where(torch.arange(d) % 3 == 0, -0.0, 0.0)  # a constant row of mixed zeros: scale +0
    return x.to(device=device, dtype=dtype)


@pytest.mark.skipif(not HAS_FBGEMM, reason="fbgemm_gpu not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [4, 8, 12, 20, 36, 64, 260])
def test_signed_zero_minimum_matches_fbgemm(dtype, d):
    # fbgemm's bias byte depends on where each zero sits (its AVX2 min order), not on torch.amin's choice
    x = _signed_zero_rows(d, dtype, "cpu", seed=d)
    theirs = torch.ops.fbgemm.FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf(x, 4)
    assert torch.equal(dv365_ops.int4_quantize(x, half_scale_bias=True), theirs)
    assert torch.equal(R.int4_quantize(x, True), theirs)


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [2, 8, 30, 256, 258, 2064])  # 2064: CUDA's loop kernel (rows over 2048 columns)
def test_signed_zero_minimum_matches_reference(device, half, dtype, d):
    x = _signed_zero_rows(d, dtype, device, seed=d)
    assert torch.equal(dv365_ops.int4_quantize(x, half_scale_bias=half).cpu(), R.int4_quantize(x.cpu(), half))
    assert torch.equal(dv365_ops.int4_quantize(x[:, 1:-1], half_scale_bias=half).cpu(), R.int4_quantize(x[:, 1:-1].cpu(), half))


def test_denormal_range_encodes(device):
    # (max - min) / 15 is a denormal whose inverse overflows: the scale becomes FLT_MIN, the codes stay exact
    x = torch.tensor([[0, 1.5e-38, 7e-39, 1e-39], [5e-39, 0, 5e-39, 0]], device=device)
    packed = dv365_ops.int4_quantize(x)
    assert torch.equal(packed.cpu(), R.int4_quantize(x.cpu()))
    scale = packed[0, 2:6].cpu().clone().view(torch.float32)
    assert float(scale) == torch.finfo(torch.float32).tiny
    y = dv365_ops.int4_dequantize(packed)
    assert bool((y - x).abs().max() <= float(scale) / 2) and bool((y[0] != 0).any())  # not all decoded to 0


@pytest.mark.parametrize(
    "half, row, message",
    [
        (False, [-3e38, 3e38, 0, 1], r"row 1 of x spans \[-3e\+38, 3e\+38\], too wide for float32 codes"),
        (False, [-3.4e38, 1e38, 1, 2], r"row 1 of x spans \[-3\.4e\+38, 1e\+38\], too wide for float32 codes"),
        (True, [-1e5, 0, 1, 2], r"row 1 of x spans \[-100000, 2\], beyond float16 scale/bias"),
        (True, [0, 1e6, 1, 2], r"row 1 of x spans \[0, 1e\+06\], beyond float16 scale/bias"),
        (True, [7e4, 7e4, 7e4, 7e4], r"row 1 of x spans \[70000, 70000\], beyond float16 scale/bias"),
    ],
)
def test_rows_beyond_the_format_raise(device, half, row, message):
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], row], device=device)
    with pytest.raises(RuntimeError, match=r"dv365::int4_quantize: " + message):
        dv365_ops.int4_quantize(x, half_scale_bias=half)
    with pytest.raises(RuntimeError, match=r"dv365::int4_quantize: " + message):
        R.int4_quantize(x, half)


@pytest.mark.parametrize("half", [False, True])
def test_rows_at_the_edge_of_the_format_encode(device, half):
    # the largest rows each format holds: finite bias and scale, every value back within its bound
    big = [-65504.0, 0.0, 65504.0, 1.0] if half else [-3.4e38, 0.0, 1.0, 2.0]
    x = torch.tensor([big], device=device)
    packed = dv365_ops.int4_quantize(x, half_scale_bias=half)
    assert torch.equal(packed.cpu(), R.int4_quantize(x.cpu(), half))
    assert bool(torch.isfinite(dv365_ops.int4_dequantize(packed, half_scale_bias=half)).all())
