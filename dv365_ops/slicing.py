"""Multi-slicing (paper eq. 2-6, docs/design.md#slices): ``slice_timeline`` and the fused ``sliced_pool``.

A slice program (layout in :mod:`dv365_ops.program`) declares ~200 slices of a timeline; the reference
semantics live in :mod:`dv365_ops.reference` (``slice_membership``, ``slice_timeline``, ``sliced_pool``).

- :func:`slice_timeline` emits every slice's ids and weights in KeyedJaggedTensor order, for TorchRec.
- :func:`sliced_pool` slices and pools in one pass without materializing the slices: each event's row is
  read once per table. It is differentiable in the tables (dense gradients, or coalesced sparse COO
  gradients of the touched rows with ``sparse=True``); ``weight_sum`` is not differentiable.
"""

from __future__ import annotations

import torch

from . import _backend, _checks
from . import program as P


def slice_timeline(
    ids: list[torch.Tensor],
    offsets: torch.Tensor,
    ts: torch.Tensor,
    cats: torch.Tensor,
    floats: torch.Tensor,
    request_ts: torch.Tensor,
    prog_i: torch.Tensor,
    prog_f: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Evaluate the slice program on every event and emit ``(values int64 [L], weights float32 [L],
    lengths int64 [S * B])`` in KeyedJaggedTensor order: slice-major, then user, then timeline order, with
    ``lengths[s * B + b]`` the size of slice ``s`` for user ``b``; slice ``s`` emits ``ids[prog_i[s, TABLE]]``."""
    _check_timeline("slice_timeline", None, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f)
    op = _backend.resolve("slice_timeline", ts.device)
    return op(list(ids), offsets, ts, cats, floats, request_ts, prog_i, prog_f)


def sliced_pool(
    tables: list[torch.Tensor],
    ids: list[torch.Tensor],
    offsets: torch.Tensor,
    ts: torch.Tensor,
    cats: torch.Tensor,
    floats: torch.Tensor,
    request_ts: torch.Tensor,
    prog_i: torch.Tensor,
    prog_f: torch.Tensor,
    *,
    sparse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slice then pool (paper eq. 2-6): ``pooled [B, S, D]`` (the tables' dtype) is, per user ``b`` and
    slice ``s``, the weighted mean of ``tables[t][ids[t][e]]`` (``t = prog_i[s, TABLE]``) over the events
    ``e`` that ``s`` keeps (zeros for an empty slice); ``weight_sum float32 [B, S]`` is the sum of the
    weights. ``sparse=True`` makes the tables' gradients coalesced sparse COO tensors of the rows that ``ids`` touch."""
    _check_timeline("sliced_pool", tables, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f)
    op = _backend.resolve("sliced_pool", ts.device)
    return op(list(tables), list(ids), offsets, ts, cats, floats, request_ts, prog_i, prog_f, sparse)


def plan_slices(
    prog_i: torch.Tensor, prog_f: torch.Tensor, num_tables: int, cat_fields: int, float_fields: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan of a slice program for a timeline with ``num_tables`` tables, ``cat_fields`` categorical rows and
    ``float_fields`` float rows: ``(plan_i int64, plan_f float64)``, CPU tensors (for a CPU or a CUDA program: a
    CUDA program is read on the host once and shares its plan with the CUDA kernels) in the layout of
    :mod:`dv365_ops.program` (plan section; :func:`dv365_ops.program.plan_sections` names the parts). It checks
    the program's entries with the slicing ops' messages. Every backend evaluates a program through this plan (the
    compiled kernels build it themselves), kept once per program."""
    return torch.ops.dv365.plan_slices(prog_i, prog_f, num_tables, cat_fields, float_fields)


def _check_timeline(op, tables, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f) -> None:
    if tables is not None:
        _backend.check_tensor_list(op, "tables", tables)
    _backend.check_tensor_list(op, "ids", ids, index=True)
    for name, x, index in (("offsets", offsets, True), ("ts", ts, True), ("cats", cats, False),
                           ("floats", floats, False), ("request_ts", request_ts, True), ("prog_i", prog_i, False),
                           ("prog_f", prog_f, False)):
        _backend.check_tensor(op, name, x, index)


def _check_timeline_args(op, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, num_tables=None) -> None:
    """The metadata checks (devices, dtypes, ranks, shapes) that every slicing kernel makes on the timeline and the
    program, with the compiled kernels' messages (csrc/checks/slicing.h, which the CPU and CUDA hosts share, and
    csrc/cpu/slicing.cpp ``compile_program``). The fakes and the Triton wrappers call it; the data checks (offsets, ascending ts,
    categorical values, program entries, id ranges) need the values and stay with each kernel."""
    c, name_of, sizes = _checks.check, _checks.dtype_name, _checks.sizes
    # every tensor on the timeline's device, the program included (the CPU kernels read it on the CPU, CUDA
    # and Triton on the GPU)
    for name, x in (("offsets", offsets), ("cats", cats), ("floats", floats), ("request_ts", request_ts),
                    ("prog_i", prog_i), ("prog_f", prog_f)):
        _checks.check_same_device(op, name, x, ts, "ts")
    for x in ids:
        _checks.check_same_device(op, "ids", x, ts, "ts")
    for name, x in (("offsets", offsets), ("ts", ts), ("request_ts", request_ts)):
        c(op, x.dtype == torch.int64, lambda: f"{name} must be Long, got {name_of(x.dtype)}")
        c(op, x.dim() == 1, lambda: f"{name} must be 1-D, got shape {sizes(x)}")
    c(op, offsets.shape[0] >= 1, lambda: "offsets must have B + 1 >= 1 entries")
    b, n = offsets.shape[0] - 1, ts.shape[0]
    c(op, request_ts.shape[0] == b, lambda: f"request_ts must have shape [B={b}], got {sizes(request_ts)}")
    c(op, cats.dim() == 2 and cats.shape[1] == n, lambda: f"cats must have shape [C, N={n}], got {sizes(cats)}")
    c(op, not (cats.dtype.is_floating_point or cats.dtype.is_complex or cats.dtype == torch.bool),
      lambda: f"cats must be an integer tensor (int8), got {name_of(cats.dtype)}")
    c(op, floats.dtype == torch.float32, lambda: f"floats must be float32, got {name_of(floats.dtype)}")
    c(op, floats.dim() == 2 and floats.shape[1] == n, lambda: f"floats must have shape [F, N={n}], got {sizes(floats)}")
    for t, x in enumerate(ids):
        c(op, x.dtype == torch.int64 and x.dim() == 1 and x.shape[0] == n,
          lambda: f"ids[{t}] must be a 1-D int64 tensor of N={n} events, got {name_of(x.dtype)} {sizes(x)}")
    _check_program_shapes(op, prog_i, prog_f)
    if num_tables is not None:
        c(op, len(ids) == num_tables, lambda: f"ids must hold one tensor per table ({num_tables}), got {len(ids)}")


def _check_program_shapes(op, prog_i, prog_f) -> None:
    """prog_i [S, NUM_INT] int64 and prog_f [S, NUM_FLOAT] float64 (csrc/checks/slicing.h ``program_shapes``)."""
    c, name_of, sizes = _checks.check, _checks.dtype_name, _checks.sizes
    c(op, prog_i.dim() == 2 and prog_i.shape[1] == P.NUM_INT and prog_i.dtype == torch.int64,
      lambda: f"prog_i must be an int64 tensor of shape [S, {P.NUM_INT}], got {name_of(prog_i.dtype)} {sizes(prog_i)}")
    c(op, prog_f.dim() == 2 and prog_f.shape[0] == prog_i.shape[0] and prog_f.shape[1] == P.NUM_FLOAT
      and prog_f.dtype == torch.float64,
      lambda: f"prog_f must be a float64 tensor of shape [S={prog_i.shape[0]}, {P.NUM_FLOAT}], got "
      f"{name_of(prog_f.dtype)} {sizes(prog_f)}")


def _check_tables(op, tables, ids, ts) -> None:
    """The tables' checks (csrc/checks/slicing.h ``tables``): one dtype, one width D, 2-D, on ts's device."""
    c, name_of = _checks.check, _checks.dtype_name
    c(op, len(tables) >= 1, lambda: "tables must hold at least one table")
    c(op, len(ids) == len(tables), lambda: f"ids must hold one tensor per table ({len(tables)}), got {len(ids)}")
    dt = tables[0].dtype
    c(op, dt in _checks.FLOAT_TYPES, lambda: f"tables must be float32, bfloat16, float16 or float64, got {name_of(dt)}")
    for t, x in enumerate(tables):
        _checks.check_same_device(op, "tables", x, ts, "ts")
        c(op, x.dim() == 2, lambda: f"tables[{t}] must be 2-D [rows, D], got {_checks.sizes(x)}")
        c(op, x.dtype == dt, lambda: f"tables must share one dtype: tables[0] is {name_of(dt)}, tables[{t}] is "
          f"{name_of(x.dtype)}")
        c(op, x.shape[1] == tables[0].shape[1],
          lambda: f"tables must share D: tables[0] has {tables[0].shape[1]}, tables[{t}] has {x.shape[1]}")


def _check_sliced_pool(tables, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f) -> None:
    op = "sliced_pool"
    _check_tables(op, tables, ids, ts)
    _check_timeline_args(op, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, len(tables))


def _check_backward(op, grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f,
                    num_rows=None) -> None:
    """The backward ops' metadata checks (csrc/checks/slicing.h ``backward`` and ``num_rows``); ``num_rows`` is None
    for the per-event rows op."""
    c, name_of, sizes = _checks.check, _checks.dtype_name, _checks.sizes
    _check_timeline_args(op, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f)
    _checks.check_same_device(op, "grad", grad, ts, "ts")
    _checks.check_same_device(op, "weight_sum", weight_sum, ts, "ts")
    b, s = offsets.shape[0] - 1, prog_i.shape[0]
    c(op, grad.dtype in _checks.FLOAT_TYPES,
      lambda: f"grad must be float32, bfloat16, float16 or float64, got {name_of(grad.dtype)}")
    c(op, grad.dim() == 3 and grad.shape[0] == b and grad.shape[1] == s,
      lambda: f"grad must be a tensor of shape [B={b}, S={s}, D], got {sizes(grad)}")
    c(op, weight_sum.dtype == torch.float32 and weight_sum.dim() == 2 and weight_sum.shape[0] == b
      and weight_sum.shape[1] == s,
      lambda: f"weight_sum must be a float32 tensor of shape [B={b}, S={s}], got "
      f"{name_of(weight_sum.dtype)} {sizes(weight_sum)}")
    if num_rows is not None:
        c(op, len(num_rows) == len(ids),
          lambda: f"num_rows must hold one entry per table ({len(ids)}), got {len(num_rows)}")
        for r in num_rows:
            c(op, r >= 0, lambda: f"num_rows must be >= 0, got {r}")


@torch.library.register_fake("dv365::plan_slices")
def _fake_plan_slices(prog_i, prog_f, num_tables, cat_fields, float_fields):
    op, c = "plan_slices", _checks.check
    c(op, prog_i.device == prog_f.device and prog_i.device.type in ("cpu", "cuda", "meta"),
      lambda: f"prog_i and prog_f must be CPU or CUDA tensors on one device, got {prog_i.device} and {prog_f.device}")
    c(op, num_tables >= 0 and cat_fields >= 0 and float_fields >= 0,
      lambda: f"num_tables, cat_fields and float_fields must be >= 0, got {num_tables}, {cat_fields}, {float_fields}")
    _check_program_shapes(op, prog_i, prog_f)
    ctx = torch.library.get_ctx()
    # the plan is host data whatever the program's device (meta stands in for the CPU while tracing meta)
    host = "meta" if prog_i.device.type == "meta" else "cpu"
    return (prog_i.new_empty((ctx.new_dynamic_size(),), device=host),
            prog_f.new_empty((ctx.new_dynamic_size(),), device=host))


@torch.library.register_fake("dv365::slice_timeline")
def _fake_slice_timeline(ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f):
    _check_timeline_args("slice_timeline", ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f)
    total = torch.library.get_ctx().new_dynamic_size()
    lengths = ts.new_empty((prog_i.shape[0] * (offsets.shape[0] - 1),), dtype=torch.int64)
    return ts.new_empty((total,), dtype=torch.int64), ts.new_empty((total,), dtype=torch.float32), lengths


@torch.library.register_fake("dv365::sliced_pool")
def _fake_sliced_pool(tables, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, sparse=False):
    _check_sliced_pool(tables, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f)
    b, s, d = offsets.shape[0] - 1, prog_i.shape[0], tables[0].shape[1]
    return tables[0].new_empty((b, s, d)), tables[0].new_empty((b, s), dtype=torch.float32)


@torch.library.register_fake("dv365::sliced_pool_backward")
def _fake_sliced_pool_backward(grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, num_rows):
    _check_backward("sliced_pool_backward", grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i,
                    prog_f, num_rows)
    return [grad.new_empty((r, grad.shape[2])) for r in num_rows]


@torch.library.register_fake("dv365::sliced_pool_backward_rows")
def _fake_sliced_pool_backward_rows(grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f):
    _check_backward("sliced_pool_backward_rows", grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i,
                    prog_f)
    return [grad.new_empty((t.shape[0], grad.shape[2])) for t in ids]


def _setup_context_sliced_pool(ctx, inputs, output):
    tables, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, sparse = inputs
    ctx.save_for_backward(*ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, output[1])
    ctx.num_tables = len(tables)
    ctx.num_rows = [t.shape[0] for t in tables]
    ctx.sparse = sparse
    ctx.mark_non_differentiable(output[1])


def _backward_sliced_pool(ctx, grad_pooled, grad_weight_sum):
    saved = ctx.saved_tensors
    ids = list(saved[: ctx.num_tables])
    offsets, ts, cats, floats, request_ts, prog_i, prog_f, weight_sum = saved[ctx.num_tables :]
    grad = grad_pooled.contiguous()
    if ctx.sparse:
        grads = _sparse_table_grads(grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f,
                                    ctx.num_rows)
    else:
        op = _backend.resolve("sliced_pool_backward", grad.device)
        grads = list(op(grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, ctx.num_rows))
    # one entry per argument the op was called with: the dispatcher drops ``sparse`` when it is the default
    return (grads, [None] * len(ids)) + (None,) * (8 if ctx.sparse else 7)


def _sparse_table_grads(grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, num_rows):
    """The tables' gradients as coalesced sparse COO tensors holding only the rows the batch's ids touch.

    One row per *event* (``sliced_pool_backward_rows``) would be 1.3M x D per table at W40K, which the optimizer
    then sums per unique row; instead each id column is renumbered to its unique ids (``inverse``), and the dense
    backward op scatters straight into a ``[unique, D]`` gradient: already summed and sorted, so no kernel is
    added and the optimizer (and DDP's gather) take the rows as they are. Tables that pool one id column share its
    ``unique``. A touched row that no slice keeps gets a zero row, as with the per-event rows."""
    rows_of, inverse_of = _unique_columns(ids, num_rows)
    op = _backend.resolve("sliced_pool_backward", grad.device)
    values = op(grad, weight_sum, inverse_of, offsets, ts, cats, floats, request_ts, prog_i, prog_f,
                [r.numel() for r in rows_of])
    d = grad.shape[2]
    return [torch.sparse_coo_tensor(r[None], v, (n, d), is_coalesced=True, check_invariants=False)
            for r, v, n in zip(rows_of, values, num_rows)]


def _unique_columns(ids: list[torch.Tensor], num_rows: list[int],
                    method: str | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per table, ``torch.unique(ids[t], sorted=True, return_inverse=True)``, once per distinct id column.

    On CUDA every ``unique`` waits for the device to learn its size, so the columns are renumbered together: the
    columns stacked, each shifted past the rows of the columns before it (which keeps them apart and in order),
    then one read of where each column's rows start. ``method``:

    - ``"mark"`` (when the tables' rows are at most about 4x the ids, as at W40K): mark the touched rows in a
      ``[rows]`` vector, its running sum numbers them; no sort, one wait (for the counts). The fastest on the
      CPU too at such sizes (``benchmarks/bench_unique_columns.py``).
    - ``"sort"`` (CUDA, many more rows): one ``unique`` of the stacked columns, two waits.
    - ``"per column"`` (the CPU, many more rows): one ``unique`` per column; there is no wait to save, and one
      sort of all the columns measured slower.

    The ids are in range (the forward checked them), so a column's shift is the most rows of the tables that
    pool it."""
    column_of, columns, span = {}, [], []
    for i, n in zip(ids, num_rows):
        key = storage_key(i)
        if key not in column_of:
            column_of[key] = len(columns)
            columns.append(i)
            span.append(0)
        c = column_of[key]
        span[c] = max(span[c], int(n))
    shift = [0]
    for n in span:
        shift.append(shift[-1] + n)
    device, events = columns[0].device, sum(c.numel() for c in columns)
    if method is None and _tracing(columns):
        # a traced backward (torch.compile, opcheck) cannot branch on the counts a mark or a stacked sort reads back
        method = "per column"
    if method is None:
        method = _unique_method(device, shift[-1], events)
    if method == "per column" or (method == "sort" and len(columns) == 1):
        per_column = [torch.unique(c, sorted=True, return_inverse=True) for c in columns]
    else:
        # every step of a training run renumbers the same tables' columns: the few tensors that depend only on
        # their sizes are kept, and the steps below are the fewest ops (each costs host time, which a W40K step
        # runs short of)
        shift_t, local = _column_constants(device, tuple(span))
        flat = torch.stack(columns)
        flat += shift_t[:-1, None]
        flat = flat.view(-1)
        if method == "mark":
            # mark[1 + row] for every touched row; csum[k] = the touched rows below row k
            mark = torch.zeros(shift[-1] + 1, dtype=torch.bool, device=device)
            mark[1:].index_fill_(0, flat, True)
            csum = torch.cumsum(mark, 0)
            starts = csum.index_select(0, shift_t)  # where each column's touched rows start
            bounds = starts.tolist()
            # touched row k goes to slot csum[k], the others to a spare last slot (its value is dropped); the value
            # is the row within its column
            slot = torch.where(mark[1:], csum[:-1], bounds[-1])
            uniq = torch.empty(bounds[-1] + 1, dtype=torch.int64, device=device)
            uniq.scatter_(0, slot, local)
            uniq = uniq[:-1]
            inverse = csum.index_select(0, flat).view(len(columns), -1)
            inverse -= starts[:-1, None]
            per_column = [(uniq[bounds[c]:bounds[c + 1]], inverse[c]) for c in range(len(columns))]
        else:
            uniq, inverse = torch.unique(flat, sorted=True, return_inverse=True)
            bounds = [0, *torch.searchsorted(uniq, shift_t[1:-1]).tolist(), uniq.numel()]
            inverse = inverse.view(len(columns), -1)
            per_column = []
            for c in range(len(columns)):
                lo, hi = bounds[c], bounds[c + 1]
                per_column.append((uniq[lo:hi] - shift[c] if shift[c] else uniq[lo:hi],
                                   inverse[c] - lo if lo else inverse[c]))
    key_of = [column_of[storage_key(i)] for i in ids]
    return [per_column[c][0] for c in key_of], [per_column[c][1] for c in key_of]


_COLUMN_CONSTANTS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _column_constants(device: torch.device, span: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """For columns of ``span`` rows stacked: where each starts (``[C + 1]``) and every stacked row's row within its
    column (``[sum(span)]``), on ``device``; made once per (device, span) and kept (a handful per process)."""
    key = (device, span)
    hit = _COLUMN_CONSTANTS.get(key)
    if hit is None:
        shift = torch.tensor([0, *span], dtype=torch.int64).cumsum(0)
        local = torch.cat([torch.arange(n, dtype=torch.int64) for n in span]) if span else shift[:0]
        hit = (shift.to(device), local.to(device))
        if len(_COLUMN_CONSTANTS) >= 16:
            _COLUMN_CONSTANTS.pop(next(iter(_COLUMN_CONSTANTS)))
        _COLUMN_CONSTANTS[key] = hit
    return hit


def _unique_method(device: torch.device, rows: int, events: int) -> str:
    cuda = device.type == "cuda"
    # the mark's passes over every row cost next to nothing on a GPU, and about what a sort of as many ids does on
    # the CPU
    return "mark" if rows <= 4 * events + (1 << 16 if cuda else 0) else "sort" if cuda else "per column"


def _tracing(tensors: list[torch.Tensor]) -> bool:
    return torch.compiler.is_compiling() or torch._guards.detect_fake_mode(tensors) is not None


def storage_key(x: torch.Tensor) -> tuple:
    """Equal for two 1-D views of the same elements (the pooling module passes each table a fresh view of its
    column, and autograd hands the row-wise Adagrad new tensors over one index tensor); a traced (fake) tensor has
    no data pointer, so it is only equal to itself. The one identity the sparse backward and the table update both
    group by (``data_ptr`` already counts the storage offset)."""
    try:
        return (x.device, x.data_ptr(), x.numel(), x.stride(0))
    except RuntimeError:
        return (id(x),)


torch.library.register_autograd(
    "dv365::sliced_pool", _backward_sliced_pool, setup_context=_setup_context_sliced_pool
)

__all__ = ["plan_slices", "slice_timeline", "sliced_pool"]
