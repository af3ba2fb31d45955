"""The slice plan (dv365::plan_slices, csrc/slice_plan.h): its grouping against the program's semantics, its
windows and lookup tables against brute force, and that every backend runs the one plan, kept per program."""

import os

import pytest
import torch

import dv365_ops
from dv365_ops import program as P
from dv365_ops import reference
from dv365_ops.testing import random_program, random_timeline

from tolerances import assert_close

CATS = (7, 3, 4)
ROWS = (97, 31, 13)
INT64_MIN = -(2**63)


def builds() -> int:
    """Plans built by the C++ builder, plus the program plans the Triton kernels made from them (they keep their
    own, on the program's device): a backend that fails to reuse a plan counts here."""
    made = 0
    if dv365_ops.triton is not None:
        from dv365_ops.triton_kernels import slicing as triton_slicing

        made = triton_slicing._plans_made
    return dv365_ops._C._plan_builds() * 1000 + made


def plan(prog_i, prog_f, num_tables=len(ROWS), cats=len(CATS), floats=2):
    plan_i, plan_f = dv365_ops.plan_slices(prog_i, prog_f, num_tables, cats, floats)
    return P.plan_sections(plan_i, plan_f)


def _variants(prog_i, prog_f, copies, generator):
    """Each slice of the program `copies` times with other windows, its categorical filters moved to other
    columns (a filter may also be split in two on one field, whose masks AND to the original) and the float
    parameters its flags do not read changed: each copy keeps the same events as its original up to the window."""
    rows_i, rows_f, origin = [], [], []
    for s in range(prog_i.shape[0]):
        for c in range(copies):
            r = prog_i[s].clone()
            f = prog_f[s].clone()
            filters = [(int(r[fc]), int(r[mc])) for fc, mc in zip(P.CAT_FIELD, P.CAT_MASK) if r[fc] >= 0]
            perm = torch.randperm(P.NUM_CAT_FILTERS, generator=generator).tolist()
            if len(filters) == 1 and c % 2:
                # one filter written as two on its field: mask = a & b with a, b both supersets of mask
                field, mask = filters[0]
                extra = int(torch.randint(0, 2**62, (1,), generator=generator))
                filters = [(field, mask | extra), (field, mask | (~extra & (2**63 - 1)) | (mask & -(2**63)))]
            for j in range(P.NUM_CAT_FILTERS):
                r[P.CAT_FIELD[j]], r[P.CAT_MASK[j]] = -1, int(torch.randint(-(2**40), 2**40, (1,), generator=generator))
            for (field, mask), j in zip(filters, perm):
                r[P.CAT_FIELD[j]], r[P.CAT_MASK[j]] = field, mask
            r[P.WIN_LO] = (0, 3600, 86400, -7200)[c % 4]
            r[P.WIN_HI] = (P.NO_UPPER_BOUND, 3 * 86400, 7 * 86400, 5 * 3600)[(c + s) % 4]
            flags = int(r[P.FLAGS])
            noise = torch.rand(P.NUM_FLOAT, generator=generator, dtype=torch.float64) * 50
            unread = {P.DWELL_LO, P.DWELL_HI, P.RATIO_LO, P.RATIO_HI, P.BETA, P.GAMMA, P.S0}
            if flags & P.DWELL_FILTER:
                unread -= {P.DWELL_LO, P.DWELL_HI}
            if flags & P.RATIO_FILTER:
                unread -= {P.RATIO_LO, P.RATIO_HI, P.BETA}
            if flags & P.WEIGHTED:
                unread -= {P.GAMMA, P.S0}
            for col in unread:
                f[col] = noise[col]
            rows_i.append(r)
            rows_f.append(f)
            origin.append(s)
    order = torch.randperm(len(origin), generator=generator)
    return (torch.stack(rows_i)[order], torch.stack(rows_f)[order], torch.tensor(origin)[order])


def _membership_without_windows(tl, prog_i, prog_f):
    unwindowed = prog_i.clone()
    unwindowed[:, P.WIN_LO] = INT64_MIN
    unwindowed[:, P.WIN_HI] = P.NO_UPPER_BOUND
    return reference.slice_membership(tl["offsets"], tl["ts"], tl["cats"], tl["floats"], tl["request_ts"],
                                      unwindowed, prog_f)


@pytest.mark.parametrize("seed", range(6))
def test_groups_are_the_slices_that_keep_the_same_events(seed):
    g = torch.Generator().manual_seed(seed)
    base_i, base_f = random_program(9, num_tables=len(ROWS), cat_cardinality=CATS, generator=g)
    prog_i, prog_f, origin = _variants(base_i, base_f, 4, g)
    sec = plan(prog_i, prog_f)
    group = sec["slice_group"]
    # copies of one slice share a group however their filters are written
    for s in range(base_i.shape[0]):
        assert group[origin == s].unique().numel() == 1
    # and a group's slices keep exactly the events (with the weights) its leader keeps, up to the window
    tl = random_timeline([400, 0, 250], table_rows=ROWS, cat_cardinality=CATS, generator=g)
    keep, weight = _membership_without_windows(tl, prog_i, prog_f)
    groups = sec["groups"]
    for q in range(groups.shape[0]):
        leader = int(groups[q, P.GROUP_LEADER])
        members = (group == q).nonzero().flatten()
        assert int(members.min()) == leader
        assert torch.equal(keep[members], keep[leader].expand(len(members), -1))
        assert torch.equal(weight[members], weight[leader].expand(len(members), -1))
        assert bool((prog_i[members, P.TABLE] == groups[q, P.GROUP_TABLE]).all())
        first, count = int(groups[q, P.GROUP_FIRST]), int(groups[q, P.GROUP_COUNT])
        assert torch.equal(sec["group_slices"][first : first + count], members)


def test_slices_that_differ_are_not_grouped():
    prog_i = torch.zeros(6, P.NUM_INT, dtype=torch.int64)
    prog_i[:, list(P.CAT_FIELD)] = -1
    prog_i[:, P.WIN_HI] = P.NO_UPPER_BOUND
    prog_f = torch.zeros(6, P.NUM_FLOAT, dtype=torch.float64)
    prog_i[1, P.TABLE] = 1  # another table
    prog_i[2, P.CAT_FIELD[0]], prog_i[2, P.CAT_MASK[0]] = 0, 5  # a filter
    prog_i[3, P.FLAGS] = P.DWELL_FILTER  # a dwell filter [0, 0]
    prog_i[4, P.FLAGS] = P.DWELL_FILTER
    prog_f[4, P.DWELL_LO] = -0.0  # compared bit for bit
    prog_i[5, P.CAT_FIELD[2]], prog_i[5, P.CAT_MASK[2]] = 0, 5  # slice 2's filter in another column: grouped
    sec = plan(prog_i, prog_f, num_tables=2, cats=1)
    assert sec["slice_group"].tolist() == [0, 4, 1, 2, 3, 1]
    assert sec["table_groups"].tolist() == [0, 4, 5]
    assert sec["table_slices"].tolist() == [0, 5, 6]
    assert sec["group_slices"].tolist() == [0, 2, 5, 3, 4, 1]
    assert sec["groups"][:, P.GROUP_RANK].tolist() == [0, 1, 2, 3, 0]


def test_group_order_ranks_weights_and_float_constants():
    g = torch.Generator().manual_seed(11)
    prog_i, prog_f = random_program(60, num_tables=len(ROWS), cat_cardinality=CATS, generator=g)
    sec = plan(prog_i, prog_f)
    groups = sec["groups"]
    key = groups[:, P.GROUP_TABLE] * 1000 + groups[:, P.GROUP_LEADER]
    assert bool((key.diff() > 0).all()), "groups are numbered by table, then leader"
    for t in range(len(ROWS)):
        lo, hi = sec["table_groups"][t : t + 2].tolist()
        assert bool((groups[lo:hi, P.GROUP_TABLE] == t).all())
        assert groups[lo:hi, P.GROUP_RANK].tolist() == list(range(hi - lo))
    flags = groups[:, P.GROUP_FLAGS]
    weighted = (flags & P.WEIGHTED) != 0
    assert groups[weighted, P.GROUP_WSLOT].tolist() == list(range(int(weighted.sum())))
    assert bool((groups[~weighted, P.GROUP_WSLOT] == -1).all())
    leaders = groups[:, P.GROUP_LEADER]
    ratio = (flags & P.RATIO_FILTER) != 0
    assert torch.equal(sec["betas"][groups[ratio, P.GROUP_BETA]], prog_f[leaders[ratio], P.BETA])
    assert torch.equal(sec["gammas"][groups[weighted, P.GROUP_GAMMA]], prog_f[leaders[weighted], P.GAMMA])
    assert sec["betas"].unique().numel() == sec["betas"].numel()
    assert bool((groups[~ratio, P.GROUP_BETA] == -1).all())
    fg = sec["float_groups"]
    for q in range(groups.shape[0]):
        assert bool((int(fg[q // 64]) >> (q % 64)) & 1) == bool(flags[q] != 0)


@pytest.mark.parametrize("seed", range(4))
def test_bounds_and_covered_segments(seed):
    g = torch.Generator().manual_seed(100 + seed)
    prog_i, prog_f = random_program(int(torch.randint(1, 40, (1,), generator=g)), num_tables=len(ROWS),
                                    cat_cardinality=CATS, generator=g)
    sec = plan(prog_i, prog_f)
    lo, hi = prog_i[:, P.WIN_LO], prog_i[:, P.WIN_HI]
    bounds = torch.cat([lo, hi]).unique()
    assert torch.equal(sec["bounds"], bounds)
    k = bounds.numel()
    expected = [int(0 < j < k and bool(((lo <= bounds[j - 1]) & (bounds[j] <= hi)).any())) for j in range(k + 1)]
    assert sec["covered"].tolist() == expected


def test_categorical_lookup_tables():
    g = torch.Generator().manual_seed(5)
    prog_i, prog_f = random_program(70, num_tables=len(ROWS), cat_cardinality=CATS, generator=g)
    sec = plan(prog_i, prog_f)
    groups = sec["groups"]
    fields = sec["cat_fields"].tolist()
    used = sorted({int(prog_i[s, c]) for s in range(prog_i.shape[0]) for c in P.CAT_FIELD if prog_i[s, c] >= 0})
    assert fields == used
    table = sec["cat_pass"]
    for q in range(groups.shape[0]):
        r = prog_i[int(groups[q, P.GROUP_LEADER])]
        for i, field in enumerate(fields):
            for v in range(P.PLAN_CAT_VALUES):
                accept = all(((int(r[mc]) >> v) & 1) for fc, mc in zip(P.CAT_FIELD, P.CAT_MASK) if r[fc] == field)
                assert bool((int(table[i, v, q // 64]) >> (q % 64)) & 1) == accept


def test_empty_program():
    sec = plan(torch.zeros(0, P.NUM_INT, dtype=torch.int64), torch.zeros(0, P.NUM_FLOAT, dtype=torch.float64))
    assert sec["groups"].shape == (0, P.GROUP_COLS)
    assert sec["bounds"].numel() == 0 and sec["covered"].tolist() == [0]
    assert sec["table_slices"].tolist() == [0] * (len(ROWS) + 1)


@pytest.mark.parametrize("column, value, message", [
    (P.TABLE, 3, r"dv365::plan_slices: prog_i\[1, TABLE\] = 3 is out of range for 3 tables$"),
    (P.FLAGS, 9, r"dv365::plan_slices: prog_i\[1, FLAGS\] = 9 has unknown bits"),
    (P.CAT_FIELD[2], 3, r"dv365::plan_slices: prog_i\[1, CAT_FIELD2\] = 3 is out of range for cats with 3 rows$"),
])
def test_bad_programs(column, value, message):
    prog_i, prog_f = random_program(3, num_tables=len(ROWS), cat_cardinality=CATS)
    prog_i[1, column] = value
    with pytest.raises(RuntimeError, match=message):
        dv365_ops.plan_slices(prog_i, prog_f, len(ROWS), len(CATS), 2)


def test_bad_plan_arguments():
    prog_i, prog_f = random_program(3, num_tables=1, cat_cardinality=CATS)
    prog_i[:, P.FLAGS] = P.DWELL_FILTER
    with pytest.raises(RuntimeError, match=r"floats has 0 rows but slice 0 uses dwell, ratio or weight"):
        dv365_ops.plan_slices(prog_i, prog_f, 1, len(CATS), 0)
    with pytest.raises(RuntimeError, match=r"dv365::plan_slices: prog_f must be a float64 tensor of shape \[S=3, 7\]"):
        dv365_ops.plan_slices(prog_i, prog_f.float(), 1, len(CATS), 2)
    with pytest.raises(RuntimeError, match=r"dv365::plan_slices: num_tables, cat_fields and float_fields must be >= 0"):
        dv365_ops.plan_slices(prog_i, prog_f, -1, len(CATS), 2)


def _plan_sample():
    prog_i, prog_f = random_program(12, num_tables=len(ROWS), cat_cardinality=CATS)
    return prog_i, prog_f, len(ROWS), len(CATS), 2


OPCHECK_SAMPLES = {"plan_slices": _plan_sample}


def test_opcheck():
    torch.library.opcheck(torch.ops.dv365.plan_slices.default, OPCHECK_SAMPLES["plan_slices"]())


# ---- every backend runs the plan, kept once per program


def _pool_inputs(prog_i, prog_f, seed=0):
    g = torch.Generator().manual_seed(seed)
    tl = random_timeline([120, 0, 64, 3], table_rows=ROWS, cat_cardinality=CATS, generator=g)
    tables = [torch.randn(r, 8, generator=g) for r in ROWS]
    return tables, tl


def _pool(tables, tl, prog_i, prog_f):
    return dv365_ops.sliced_pool(tables, tl["ids"], tl["offsets"], tl["ts"], tl["cats"], tl["floats"],
                                 tl["request_ts"], prog_i, prog_f)


def _backends():
    # these tests pool CPU tensors: Triton runs them only in its interpreter (tests/test_cuda_graphs.py counts the
    # Triton plans on a GPU)
    out = ["native"]
    if dv365_ops.triton is not None and os.environ.get("TRITON_INTERPRET") == "1":
        out.append("triton")
    return out


@pytest.mark.parametrize("backend", _backends())
def test_a_filter_in_another_column_is_one_group_on_every_backend(backend):
    # two slices, one filter written in column 0 and in column 2 (and a third slice with it split in two): one group
    prog_i = torch.zeros(3, P.NUM_INT, dtype=torch.int64)
    prog_i[:, list(P.CAT_FIELD)] = -1
    prog_i[:, P.WIN_HI] = torch.tensor([P.NO_UPPER_BOUND, 3 * 86400, 7 * 86400])
    prog_i[0, P.CAT_FIELD[0]], prog_i[0, P.CAT_MASK[0]] = 1, 0b101
    prog_i[1, P.CAT_FIELD[2]], prog_i[1, P.CAT_MASK[2]] = 1, 0b101
    prog_i[2, P.CAT_FIELD[1]], prog_i[2, P.CAT_MASK[1]] = 1, 0b111
    prog_i[2, P.CAT_FIELD[2]], prog_i[2, P.CAT_MASK[2]] = 1, 0b1101
    prog_f = torch.zeros(3, P.NUM_FLOAT, dtype=torch.float64)
    tables, tl = _pool_inputs(prog_i, prog_f)
    before = builds()
    with dv365_ops.use_backend(backend):
        pooled, wsum = _pool(tables, tl, prog_i, prog_f)
    after = builds()
    assert after // 1000 == before // 1000 + 1  # one plan built
    sec = plan(prog_i, prog_f)  # the cache's plan: the one the kernel ran
    assert builds() == after
    assert sec["slice_group"].tolist() == [0, 0, 0]
    ref_pooled, ref_wsum = reference.sliced_pool(tables, tl["ids"], tl["offsets"], tl["ts"], tl["cats"], tl["floats"],
                                                 tl["request_ts"], prog_i, prog_f)
    assert_close(pooled, ref_pooled)
    assert_close(wsum, ref_wsum)


@pytest.mark.parametrize("backend", _backends())
def test_alternating_programs_are_planned_once(backend):
    g = torch.Generator().manual_seed(3)
    programs = [random_program(17, num_tables=len(ROWS), cat_cardinality=CATS, generator=g) for _ in range(2)]
    tables, tl = _pool_inputs(*programs[0])
    before = builds()
    with dv365_ops.use_backend(backend):
        for step in range(6):
            prog_i, prog_f = programs[step % 2]
            _pool(tables, tl, prog_i, prog_f)
            # a fresh float64 view of the same data (what MultiSlicePooling passes) is the same program
            _pool(tables, tl, prog_i, prog_f.view(torch.int64).view(torch.float64))
        per_plan = 1001 if backend == "triton" else 1000  # the builder's plan, and Triton's copy of it
        assert builds() == before + 2 * per_plan
        # an in-place edit through torch bumps the version: planned again
        programs[0][1][:, P.S0] += 0.25
        _pool(tables, tl, *programs[0])
        assert builds() == before + 3 * per_plan
        # the backward runs the forward's plan
        tabs = [t.clone().requires_grad_() for t in tables]
        _pool(tabs, tl, *programs[1])[0].sum().backward()
        assert builds() == before + 3 * per_plan


def test_inference_tensors_are_planned_every_call():
    prog_i, prog_f = random_program(5, num_tables=len(ROWS), cat_cardinality=CATS)
    with torch.inference_mode():
        pi, pf = prog_i.clone(), prog_f.clone()
    tables, tl = _pool_inputs(prog_i, prog_f)
    before = builds()
    for _ in range(2):
        _pool(tables, tl, pi, pf)
    assert builds() == before + 2000


def test_multi_slice_pooling_plans_each_timeline_once():
    from timeline_data import random_batch, random_request_ts

    from dv365.pooling import MultiSlicePooling
    from dv365.spec import load_default_spec

    module = MultiSlicePooling(load_default_spec(), dim=8,
                               num_rows={"media_id": 50, "author_id": 50, "topic_id": 50})
    request_ts = random_request_ts(3)
    explicit = random_batch("explicit", [30, 0, 12], request_ts)
    implicit = random_batch("implicit", [9, 40, 0], request_ts)
    before = builds()
    for _ in range(3):
        module(explicit, implicit, request_ts)
    assert builds() == before + 2000  # the explicit and the implicit program, once each
