"""One table of bad inputs, run against every backend of every op: one input gives one error, naming the op and
the argument, whichever implementation serves it (issue 14, "one set of checks per op").

Backends: ``cpu`` (the compiled CPU kernel), ``meta`` and ``fake`` (the fake implementation, on meta tensors and
under ``FakeTensorMode`` as torch.compile runs it), ``triton`` (the
``<op>_triton`` op: on CUDA tensors, or on CPU tensors in Triton's interpreter) and ``cuda`` (the compiled CUDA
kernel). Each case starts from valid inputs (``test_valid_inputs_pass`` runs them unchanged on every backend) and
breaks one thing. Cases that need the values (``data=True``: offsets, ranges, non-finite rows) cannot be seen by a
fake and skip ``meta`` and ``fake``. Regexes are anchored at ``dv365::<op>:`` and spell the whole message.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import pytest
import torch

from dv365_ops import _backend
from dv365_ops import program as P

T = torch.ops.dv365
HAS_CUDA = torch.cuda.is_available()


def _triton_device() -> str | None:
    """Where the Triton ops run here: CUDA, or the CPU under TRITON_INTERPRET=1; None without Triton."""
    if not _backend.triton_available():
        return None
    from dv365_ops.triton_kernels import _util

    return "cuda" if HAS_CUDA else ("cpu" if _util.INTERPRET else None)


BACKENDS = ["cpu", "meta", "fake", "triton", "cuda"]


# ---- valid inputs, one builder per op (all on the CPU; the runner moves them)


def _jagged(dtype=torch.float32):
    table = torch.randn(6, 4, dtype=dtype)
    ids = torch.tensor([0, 5, 2, 2, 1])
    offsets = torch.tensor([0, 2, 2, 5])
    weights = torch.rand(5)
    return {"table": table, "ids": ids, "offsets": offsets, "weights": weights, "sparse": False}


def _jagged_backward():
    a = _jagged()
    return {"grad": torch.randn(3, 4), "ids": a["ids"], "offsets": a["offsets"], "weights": a["weights"],
            "num_rows": 6}


def _jagged_backward_rows():
    a = _jagged_backward()
    del a["num_rows"]
    return a


def _token_pool():
    return {"x": torch.randn(2, 3, 7), "stride": 3}


def _token_pool_backward():
    return {"grad": torch.randn(2, 3, 3), "stride": 3, "n": 7}


def _int4_quantize():
    return {"x": torch.randn(4, 6), "half_scale_bias": False}


def _int4_dequantize():
    return {"packed": T.int4_quantize(torch.randn(4, 6), False), "half_scale_bias": False, "dtype": None}


def _timeline():
    """Two users (2 and 3 events), one table, two slices: the last 2 days, and long-dwell events."""
    day = 86_400
    offsets = torch.tensor([0, 2, 5])
    ts = torch.tensor([10 * day, 11 * day, 9 * day, 10 * day, 12 * day])
    request_ts = torch.tensor([12 * day, 13 * day])
    cats = torch.randint(0, 64, (2, 5), dtype=torch.int8)
    floats = torch.stack([torch.rand(5) * 60 + 1, torch.rand(5) * 60])
    prog_i = torch.zeros(2, P.NUM_INT, dtype=torch.int64)
    prog_i[:, list(P.CAT_FIELD)] = -1
    prog_i[:, P.WIN_HI] = torch.tensor([2 * day, P.NO_UPPER_BOUND])
    prog_i[1, P.FLAGS] = P.DWELL_FILTER
    prog_f = torch.zeros(2, P.NUM_FLOAT, dtype=torch.float64)
    prog_f[1, P.DWELL_LO], prog_f[1, P.DWELL_HI] = 10.0, 1e9
    ids = [torch.tensor([0, 1, 2, 3, 4])]
    return {"ids": ids, "offsets": offsets, "ts": ts, "cats": cats, "floats": floats, "request_ts": request_ts,
            "prog_i": prog_i, "prog_f": prog_f}


def _slice_timeline():
    return _timeline()


def _sliced_pool():
    return {"tables": [torch.randn(5, 3)], **_timeline(), "sparse": False}


def _sliced_pool_backward_rows():
    return {"grad": torch.randn(2, 2, 3), "weight_sum": torch.ones(2, 2), **_timeline()}


def _plan_slices():
    t = _timeline()
    return {"prog_i": t["prog_i"], "prog_f": t["prog_f"], "num_tables": 1, "cat_fields": 2, "float_fields": 2}


def _sliced_pool_backward():
    return {**_sliced_pool_backward_rows(), "num_rows": [5]}


VALID = {
    "jagged_mean_pool": _jagged, "jagged_mean_pool_backward": _jagged_backward,
    "jagged_mean_pool_backward_rows": _jagged_backward_rows, "token_pool": _token_pool,
    "token_pool_backward": _token_pool_backward, "int4_quantize": _int4_quantize, "int4_dequantize": _int4_dequantize,
    "slice_timeline": _slice_timeline, "sliced_pool": _sliced_pool,
    "sliced_pool_backward": _sliced_pool_backward, "sliced_pool_backward_rows": _sliced_pool_backward_rows,
    "plan_slices": _plan_slices,
}


# ---- the bad inputs


@dataclasses.dataclass
class Case:
    op: str
    name: str
    bad: Callable[[dict], None]  # breaks one thing in the valid arguments
    match: str  # the message after "dv365::<op>: "
    data: bool = False  # needs the values: no fake can see it


def _set(key, value):
    def bad(a):
        a[key] = value(a[key]) if callable(value) else value
    return bad


def _set_item(key, i, value):
    def bad(a):
        a[key] = list(a[key])
        a[key][i] = value(a[key][i])
    return bad


_int32 = lambda t: t.int()  # noqa: E731

CASES = [
    # jagged mean pooling and its backward ops (csrc/cpu/jagged_pool.cpp check_jagged)
    Case("jagged_mean_pool", "int32 ids", _set("ids", _int32), r"ids must be int64, got Int$"),
    Case("jagged_mean_pool", "int32 offsets", _set("offsets", _int32), r"offsets must be int64, got Int$"),
    Case("jagged_mean_pool", "2-D ids", _set("ids", lambda t: t[None]), r"ids must be 1-D, got 2-D$"),
    Case("jagged_mean_pool", "1-D table", _set("table", lambda t: t[0]), r"table must be 2-D \[rows, D\], got 1-D$"),
    Case("jagged_mean_pool", "int64 table", _set("table", lambda t: t.long()),
         r"table must be float32, bfloat16, float16 or float64, got Long$"),
    Case("jagged_mean_pool", "empty offsets", _set("offsets", lambda t: t[:0]),
         r"offsets must have at least one element \(offsets\[0\] == 0\)$"),
    Case("jagged_mean_pool", "short weights", _set("weights", lambda t: t[:4]),
         r"weights must have shape \[N\] = \[5\] like ids, got \[4\]$"),
    Case("jagged_mean_pool", "int64 weights", _set("weights", lambda t: t.long()),
         r"weights must be float32, float64, bfloat16 or float16, got Long$"),
    Case("jagged_mean_pool", "id out of range", _set("ids", lambda t: t.index_fill(0, torch.tensor([3]), 6)),
         r"ids must be in \[0, 6\), got ids\[3\] = 6$", data=True),
    Case("jagged_mean_pool", "decreasing offsets", _set("offsets", lambda t: torch.tensor([0, 3, 2, 5])),
         r"offsets must be non-decreasing, but offsets\[1\] = 3 > offsets\[2\] = 2$", data=True),
    Case("jagged_mean_pool", "offsets from 1", _set("offsets", lambda t: torch.tensor([1, 2, 2, 5])),
         r"offsets\[0\] must be 0, got 1$", data=True),
    Case("jagged_mean_pool", "offsets short of N", _set("offsets", lambda t: torch.tensor([0, 2, 2, 4])),
         r"offsets\[-1\] must equal the number of ids \(5\), got 4$", data=True),
    Case("jagged_mean_pool", "negative weight", _set("weights", lambda t: t.index_fill(0, torch.tensor([1]), -0.5)),
         r"weights must be finite and non-negative, got weights\[1\] = -0.5$", data=True),
    Case("jagged_mean_pool", "two ids out of range", _set("ids", lambda t: torch.tensor([0, 9, 2, 7, 1])),
         r"ids must be in \[0, 6\), got ids\[1\] = 9$", data=True),
    Case("jagged_mean_pool", "NaN weight", _set("weights", lambda t: t.index_fill(0, torch.tensor([2]), float("nan"))),
         r"weights must be finite and non-negative, got weights\[2\] = -?nan$", data=True),
    Case("jagged_mean_pool_backward", "int32 ids", _set("ids", _int32), r"ids must be int64, got Int$"),
    Case("jagged_mean_pool_backward", "id out of range", _set("ids", lambda t: t.index_fill(0, torch.tensor([4]), -2)),
         r"ids must be in \[0, 6\), got ids\[4\] = -2$", data=True),
    Case("jagged_mean_pool_backward", "decreasing offsets", _set("offsets", lambda t: torch.tensor([0, 3, 2, 5])),
         r"offsets must be non-decreasing, but offsets\[1\] = 3 > offsets\[2\] = 2$", data=True),
    Case("jagged_mean_pool_backward", "infinite weight",
         _set("weights", lambda t: t.index_fill(0, torch.tensor([3]), float("inf"))),
         r"weights must be finite and non-negative, got weights\[3\] = inf$", data=True),
    Case("jagged_mean_pool_backward_rows", "offsets from 1", _set("offsets", lambda t: torch.tensor([1, 2, 2, 5])),
         r"offsets\[0\] must be 0, got 1$", data=True),
    Case("jagged_mean_pool_backward_rows", "negative weight",
         _set("weights", lambda t: t.index_fill(0, torch.tensor([0]), -1.0)),
         r"weights must be finite and non-negative, got weights\[0\] = -1$", data=True),
    Case("jagged_mean_pool_backward", "grad rows", _set("grad", lambda t: torch.randn(4, 4)),
         r"grad must have one row per bag \(3\), got 4$"),
    Case("jagged_mean_pool_backward", "negative num_rows", _set("num_rows", -1),
         r"num_rows must be non-negative, got -1$"),
    Case("jagged_mean_pool_backward", "int64 grad", _set("grad", lambda t: t.long()),
         r"grad must be float32, bfloat16, float16 or float64, got Long$"),
    Case("jagged_mean_pool_backward_rows", "int32 offsets", _set("offsets", _int32), r"offsets must be int64, got Int$"),
    Case("jagged_mean_pool_backward_rows", "grad rows", _set("grad", lambda t: torch.randn(2, 4)),
         r"grad must have one row per bag \(3\), got 2$"),
    # token pooling (csrc/cpu/token_pool.cpp)
    Case("token_pool", "stride 0", _set("stride", 0), r"stride must be >= 1, got 0$"),
    Case("token_pool", "0-d x", _set("x", lambda t: t.sum()),
         r"x must have at least 1 dimension \(tokens on the last axis\), got a 0-d tensor$"),
    Case("token_pool", "int64 x", _set("x", lambda t: t.long()),
         r"x must be float32, float64, bfloat16 or float16, got Long$"),
    Case("token_pool_backward", "negative n", _set("n", -1), r"n must be >= 0, got -1$"),
    Case("token_pool_backward", "grad windows", _set("grad", lambda t: torch.randn(2, 3, 4)),
         r"grad must have ceil\(n / stride\) = 3 entries on its last axis, got 4$"),
    Case("token_pool_backward", "int64 grad", _set("grad", lambda t: t.long()),
         r"grad must be float32, float64, bfloat16 or float16, got Long$"),
    # int4 rows (csrc/cpu/int4.cpp)
    Case("int4_quantize", "1-D x", _set("x", lambda t: t[0]), r"x must be 2-D \[R, D\], got 1-D$"),
    Case("int4_quantize", "float64 x", _set("x", lambda t: t.double()),
         r"x must be float32, bfloat16 or float16, got Double$"),
    Case("int4_quantize", "odd D", _set("x", lambda t: t[:, :5]),
         r"x must have an even number of columns D \(two codes per byte\), got D = 5$"),
    Case("int4_quantize", "infinite value", _set("x", lambda t: t.index_fill(0, torch.tensor([2]), float("inf"))),
         r"x must be finite \(found NaN or Inf\)$", data=True),
    Case("int4_quantize", "row too wide", _set("x", lambda t: torch.cat([t[:2], torch.tensor([[-3e38, 3e38, 0, 1, 0, 0]])])),
         r"row 2 of x spans \[-3e\+38, 3e\+38\], too wide for float32 codes", data=True),
    Case("int4_quantize", "first bad row named",
         _set("x", lambda t: torch.cat([t[:1], torch.tensor([[-3e38, 3e38, 0, 1, 0, 0]]), t[1:2],
                                        torch.tensor([[float("nan"), 0, 0, 0, 0, 0]])])),
         r"row 1 of x spans \[-3e\+38, 3e\+38\], too wide for float32 codes", data=True),
    Case("int4_quantize", "NaN in a bfloat16 row", _set("x", lambda t: t.bfloat16().index_fill(0, torch.tensor([3]), float("nan"))),
         r"x must be finite \(found NaN or Inf\)$", data=True),
    Case("int4_quantize", "row too wide for fp16 scale/bias",
         lambda a: a.update(half_scale_bias=True, x=torch.cat([a["x"][:1], torch.tensor([[-1e5, 1.0, 0, 0, 2, 0]])])),
         r"row 1 of x spans \[-100000, 2\], beyond float16 scale/bias \(half_scale_bias=True\)", data=True),
    Case("int4_dequantize", "float packed", _set("packed", lambda t: t.float()), r"packed must be uint8, got Float$"),
    Case("int4_dequantize", "1-D packed", _set("packed", lambda t: t[0]), r"packed must be 2-D \[R, D/2 \+ 8\], got 1-D$"),
    Case("int4_dequantize", "short rows", _set("packed", lambda t: t[:, :6]),
         r"packed must have D/2 code bytes plus 8 scale/bias bytes per row \(at least 8 columns\), got 6$"),
    Case("int4_dequantize", "float64 out", _set("dtype", torch.float64),
         r"dtype must be float32, bfloat16 or float16, got Double$"),
]

# the slicing family (csrc/checks/slicing.h, shared by the CPU and CUDA hosts, and compile_program): the
# timeline's cases run against all four slicing ops
_TIMELINE_CASES = [
    ("int32 ids", _set_item("ids", 0, _int32),
     r"ids\[0\] must be a 1-D int64 tensor of N=5 events, got Int \[5\]$"),
    ("short ids", _set_item("ids", 0, lambda t: t[:4]),
     r"ids\[0\] must be a 1-D int64 tensor of N=5 events, got Long \[4\]$"),
    ("int32 offsets", _set("offsets", _int32), r"offsets must be Long, got Int$"),
    ("2-D ts", _set("ts", lambda t: t[None]), r"ts must be 1-D, got shape \[1, 5\]$"),
    ("int32 request_ts", _set("request_ts", _int32), r"request_ts must be Long, got Int$"),
    ("request_ts per user", _set("request_ts", lambda t: t[:1]), r"request_ts must have shape \[B=2\], got \[1\]$"),
    ("float cats", _set("cats", lambda t: t.float()), r"cats must be an integer tensor \(int8\), got Float$"),
    ("cats per event", _set("cats", lambda t: t[:, :4]), r"cats must have shape \[C, N=5\], got \[2, 4\]$"),
    ("float64 floats", _set("floats", lambda t: t.double()), r"floats must be float32, got Double$"),
    ("floats per event", _set("floats", lambda t: t[:, :4]), r"floats must have shape \[F, N=5\], got \[2, 4\]$"),
    ("prog_i columns", _set("prog_i", lambda t: t[:, :9]),
     rf"prog_i must be an int64 tensor of shape \[S, {P.NUM_INT}\], got Long \[2, 9\]$"),
    ("float32 prog_f", _set("prog_f", lambda t: t.float()),
     rf"prog_f must be a float64 tensor of shape \[S=2, {P.NUM_FLOAT}\], got Float \[2, {P.NUM_FLOAT}\]$"),
    ("ts not ascending", _set("ts", lambda t: t.index_fill(0, torch.tensor([4]), 0)),
     r"ts must be ascending within each user \(user 1, event 2\)$", True),
    ("offsets short of N", _set("offsets", lambda t: torch.tensor([0, 2, 4])),
     r"offsets must start at 0 and end at N=5 \(ts.numel\(\)\), got 0 \.\. 4$", True),
    ("decreasing offsets", _set("offsets", lambda t: torch.tensor([0, 6, 5])), r"offsets must be non-decreasing \(user 1\)$",
     True),
    ("cats beyond 63", _set("cats", lambda t: t.index_fill(1, torch.tensor([3]), 64)),
     r"cats values must lie in \[0, 63\], got 64 \(row 0, event 3\)$", True),
    ("slice table", _set("prog_i", lambda t: t.index_put((torch.tensor([1]), torch.tensor([P.TABLE])), torch.tensor(1))),
     r"prog_i\[1, TABLE\] = 1 is out of range for 1 tables$", True),
    ("slice flags", _set("prog_i", lambda t: t.index_put((torch.tensor([0]), torch.tensor([P.FLAGS])), torch.tensor(8))),
     r"prog_i\[0, FLAGS\] = 8 has unknown bits \(WEIGHTED=1, DWELL_FILTER=2, RATIO_FILTER=4\)$", True),
    ("slice cat field", _set("prog_i", lambda t: t.index_put((torch.tensor([1]), torch.tensor([P.CAT_FIELD[1]])),
                                                            torch.tensor(2))),
     r"prog_i\[1, CAT_FIELD1\] = 2 is out of range for cats with 2 rows$", True),
    ("dwell slice without floats", lambda a: a.update(floats=a["floats"][:1]),
     r"floats has 1 rows but slice 1 uses dwell, ratio or weight \(needs rows video_duration, dwell_time\)$", True),
]
for _op in ("slice_timeline", "sliced_pool", "sliced_pool_backward", "sliced_pool_backward_rows"):
    CASES += [Case(_op, name, bad, match, *data) for name, bad, match, *data in _TIMELINE_CASES]
# the slice plan (csrc/slice_plan.cpp): the program's checks, with the slicing ops' messages
CASES += [
    Case("plan_slices", "float32 prog_f", _set("prog_f", lambda t: t.float()),
         rf"prog_f must be a float64 tensor of shape \[S=2, {P.NUM_FLOAT}\], got Float \[2, {P.NUM_FLOAT}\]$"),
    Case("plan_slices", "negative table count", _set("num_tables", -1),
         r"num_tables, cat_fields and float_fields must be >= 0, got -1, 2, 2$"),
    Case("plan_slices", "slice table", _set("num_tables", 0), r"prog_i\[0, TABLE\] = 0 is out of range for 0 tables$",
         True),
    Case("plan_slices", "dwell slice without floats", _set("float_fields", 1),
         r"floats has 1 rows but slice 1 uses dwell, ratio or weight \(needs rows video_duration, dwell_time\)$", True),
]
CASES += [
    Case("sliced_pool", "id out of range", _set_item("ids", 0, lambda t: t.index_fill(0, torch.tensor([2]), 5)),
         r"ids\[0\]\[2\] = 5 is out of range for a table of 5 rows$", data=True),
    Case("sliced_pool_backward", "id out of range", _set_item("ids", 0, lambda t: t.index_fill(0, torch.tensor([2]), -1)),
         r"ids\[0\]\[2\] = -1 is out of range for a table of 5 rows$", data=True),
    Case("sliced_pool", "no tables", lambda a: a.update(tables=[], ids=[]), r"tables must hold at least one table$"),
    Case("sliced_pool", "ids per table", _set("tables", lambda t: t + [torch.randn(5, 3)]),
         r"ids must hold one tensor per table \(2\), got 1$"),
    Case("sliced_pool", "int64 tables", _set_item("tables", 0, lambda t: t.long()),
         r"tables must be float32, bfloat16, float16 or float64, got Long$"),
    Case("sliced_pool", "1-D table", _set_item("tables", 0, lambda t: t[0]), r"tables\[0\] must be 2-D \[rows, D\], got \[3\]$"),
    Case("sliced_pool", "tables of two D",
         lambda a: a.update(tables=a["tables"] + [torch.randn(5, 4)], ids=a["ids"] * 2),
         r"tables must share D: tables\[0\] has 3, tables\[1\] has 4$"),
    Case("sliced_pool", "tables of two dtypes",
         lambda a: a.update(tables=a["tables"] + [torch.randn(5, 3).double()], ids=a["ids"] * 2),
         r"tables must share one dtype: tables\[0\] is Float, tables\[1\] is Double$"),
    Case("sliced_pool_backward", "grad shape", _set("grad", lambda t: t[:, :1]),
         r"grad must be a tensor of shape \[B=2, S=2, D\], got \[2, 1, 3\]$"),
    Case("sliced_pool_backward", "int64 grad", _set("grad", lambda t: t.long()),
         r"grad must be float32, bfloat16, float16 or float64, got Long$"),
    Case("sliced_pool_backward", "float64 weight_sum", _set("weight_sum", lambda t: t.double()),
         r"weight_sum must be a float32 tensor of shape \[B=2, S=2\], got Double \[2, 2\]$"),
    Case("sliced_pool_backward", "num_rows per table", _set("num_rows", [5, 5]),
         r"num_rows must hold one entry per table \(1\), got 2$"),
    Case("sliced_pool_backward", "negative num_rows", _set("num_rows", [-1]), r"num_rows must be >= 0, got -1$"),
    Case("sliced_pool_backward_rows", "weight_sum shape", _set("weight_sum", lambda t: t[:1]),
         r"weight_sum must be a float32 tensor of shape \[B=2, S=2\], got Float \[1, 2\]$"),
]


# ---- the runner


def _map_tensors(x, fn):
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, list):
        return [_map_tensors(v, fn) for v in x]
    if isinstance(x, dict):
        return {k: _map_tensors(v, fn) for k, v in x.items()}
    return x


def _to(x, device):
    return _map_tensors(x, lambda t: t.to(device))


def _op_and_device(op: str, backend: str):
    """The op that serves ``backend`` and the device of its inputs, or a reason to skip."""
    if backend == "cpu":
        return getattr(T, op), "cpu"
    if backend in ("meta", "fake"):
        return getattr(T, op), "meta" if backend == "meta" else "cpu"
    if backend == "cuda":
        if not HAS_CUDA or not _backend.has_native_kernel(op, "cuda"):
            pytest.skip("no CUDA kernel here")
        return getattr(T, op), "cuda"
    device = _triton_device()
    if device is None:
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1")
    triton_op = _backend.triton_op(op)
    if triton_op is None:
        pytest.skip(f"dv365::{op} has no Triton kernel")
    return triton_op, device


def _call(op: str, backend: str, args: dict, data: bool = False):
    fn, device = _op_and_device(op, backend)
    if backend in ("meta", "fake") and data:
        pytest.skip("a fake sees no values")
    args = _to(list(args.values()), device)
    if backend == "fake":
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import ShapeEnv

        # a shape environment, as torch.compile has, gives slice_timeline's data-dependent output size a symbol
        with FakeTensorMode(shape_env=ShapeEnv()) as mode:
            return fn(*_map_tensors(args, lambda t: mode.from_tensor(t, static_shapes=True)))
    return fn(*args)


def _case_id(case: Case) -> str:
    return f"{case.op}-{case.name.replace(' ', '_')}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", sorted(VALID))
def test_valid_inputs_pass(op, backend):
    # the cases' starting point is valid everywhere, so each case fails for the one thing it breaks
    if backend == "meta" and op in ("slice_timeline", "plan_slices"):
        pytest.skip("an output of data-dependent size: meta tensors cannot run it (FakeTensors can)")
    _call(op, backend, VALID[op]())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_input_message(case, backend):
    args = VALID[case.op]()
    case.bad(args)
    with pytest.raises(RuntimeError) as info:
        _call(case.op, backend, args, case.data)
    message = str(info.value).splitlines()[0]
    assert re.fullmatch(rf"dv365::{case.op}: {case.match}.*", message), message


# one argument on another device than the rest: the fake (a meta tensor among CPU ones dispatches to it), the
# Triton wrappers and the CUDA kernels say which argument and which devices
DEVICE_CASES = [
    ("jagged_mean_pool", "ids", "ids", "table"), ("jagged_mean_pool", "offsets", "offsets", "table"),
    ("jagged_mean_pool", "weights", "weights", "table"), ("jagged_mean_pool_backward", "ids", "ids", "grad"),
    ("jagged_mean_pool_backward_rows", "weights", "weights", "grad"),
] + [
    (op, arg, arg, "ts")
    for op in ("slice_timeline", "sliced_pool", "sliced_pool_backward", "sliced_pool_backward_rows")
    for arg in ("offsets", "cats", "floats", "request_ts", "prog_i", "prog_f")
] + [
    ("sliced_pool", ("ids", 0), "ids", "ts"), ("sliced_pool", ("tables", 0), "tables", "ts"),
    ("sliced_pool_backward", "grad", "grad", "ts"), ("sliced_pool_backward_rows", "weight_sum", "weight_sum", "ts"),
]


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
@pytest.mark.parametrize("op, arg, name, ref", DEVICE_CASES, ids=lambda v: v if isinstance(v, str) else f"{v[0]}[{v[1]}]")
def test_argument_on_another_device(op, arg, name, ref, backend):
    fn, device = _op_and_device(op, backend)
    other = "cpu" if device == "cuda" else "meta"
    args = _to(VALID[op](), device)
    if isinstance(arg, tuple):
        key, i = arg
        args[key] = list(args[key])
        args[key][i] = args[key][i].to(other)
    else:
        args[arg] = args[arg].to(other)
    dev = r"(cpu|meta|cuda:\d+)"
    with pytest.raises(RuntimeError, match=rf"^dv365::{op}: {name} must be on the same device as {ref} \({dev}\), "
                                           rf"got {dev}$"):
        fn(*args.values())


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_backward_rows_takes_any_ids(backend):
    # the per-event rows index no table, so no id is out of range: every backend returns w_i / sum(w) * grad
    args = VALID["jagged_mean_pool_backward_rows"]()
    reference = _call("jagged_mean_pool_backward_rows", "cpu", args)
    args["ids"] = torch.tensor([-3, 0, 2**40, 5, -1])
    rows = _call("jagged_mean_pool_backward_rows", backend, args)
    torch.testing.assert_close(rows.cpu(), reference)


def test_sliced_pool_meta_input_is_an_error_not_garbage():
    # the example: one input on the meta device used to give uninitialised outputs
    args = VALID["sliced_pool"]()
    args["cats"] = args["cats"].to("meta")
    with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: cats must be on the same device as ts \(cpu\), "
                                           r"got meta"):
        T.sliced_pool(*args.values())


def test_every_op_has_cases():
    ops = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("dv365::")}
    native = {op for op in ops if not op.endswith("_triton")}
    assert native == set(VALID), sorted(native ^ set(VALID))
    assert native == {c.op for c in CASES}, sorted(native ^ {c.op for c in CASES})
