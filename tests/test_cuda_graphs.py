"""Slice plans on CUDA (skipped without a CUDA device): a program seen once is planned once, its later calls read no
program on the host, and a CUDA graph captures MultiSlicePooling's forward after one warm-up call, native and
Triton."""

import pytest
import torch
from timeline_data import random_batch, random_request_ts

import dv365_ops
from dv365.pooling import MultiSlicePooling
from dv365.spec import load_default_spec

HAS_CUDA = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key("dv365::sliced_pool", "CUDA")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and the CUDA build")]

NUM_ROWS = {"media_id": 500, "author_id": 200, "topic_id": 200}  # random_batch draws every id below num_ids=200


def _backends():
    return ["native"] + (["triton"] if dv365_ops.triton is not None else [])


def _builds() -> int:
    made = 0
    if dv365_ops.triton is not None:
        from dv365_ops.triton_kernels import slicing as triton_slicing

        made = triton_slicing._plans_made
    return dv365_ops._C._plan_builds() * 1000 + made


def _inputs(seed: int):
    torch.manual_seed(seed)
    request_ts = random_request_ts(4)
    explicit = random_batch("explicit", [300, 0, 41, 1000], request_ts, num_ids=200)
    implicit = random_batch("implicit", [90, 700, 0, 12], request_ts, num_ids=200)
    return explicit.to("cuda"), implicit.to("cuda"), request_ts.to("cuda")


def _module():
    torch.manual_seed(0)
    return MultiSlicePooling(load_default_spec(), dim=64, num_rows=NUM_ROWS, device="cuda")


@pytest.mark.parametrize("backend", _backends())
def test_each_program_is_planned_once(backend):
    module = _module()
    explicit, implicit, request_ts = _inputs(0)
    with dv365_ops.use_backend(backend):
        before = _builds()
        counts = []
        for _ in range(4):
            out = module(explicit, implicit, request_ts)
            out.sum().backward()
            counts.append(_builds() - before)
        # the first step plans the explicit and the implicit program: the builder once each (Triton asks it with
        # the device program, so the entry is the one the native op uses), and Triton makes its device copy once
        # each; later steps, forward and backward, plan nothing
        assert counts[0] == 2 * 1000 + (2 if backend == "triton" else 0)
        assert counts == [counts[0]] * 4


@pytest.mark.parametrize("backend", _backends())
def test_graph_capture_of_multi_slice_pooling(backend):
    module = _module()
    explicit, implicit, request_ts = _inputs(1)
    with dv365_ops.use_backend(backend), torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            module(explicit, implicit, request_ts)  # the warm-up call plans both programs
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = module(explicit, implicit, request_ts)
        # fresh table rows and request times, replayed
        for table in module.tables.values():
            table.copy_(torch.randn_like(table))
        request_ts.add_(3600)
        graph.replay()
        torch.cuda.synchronize()
        expected = module(explicit, implicit, request_ts)
    torch.testing.assert_close(static_out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", _backends())
def test_capturing_an_unseen_program_is_a_clear_error(backend):
    module = _module()
    explicit, implicit, request_ts = _inputs(2)
    prog = module.programs["explicit"]
    fresh_i, fresh_f = prog.prog_i.to("cuda"), prog.prog_f.to("cuda")  # never planned
    tables = [module.tables[n].detach() for n in prog.tables]
    args = (tables, prog.ids(explicit), explicit.offsets, explicit.ts, explicit.cats, explicit.floats, request_ts,
            fresh_i, fresh_f)
    with dv365_ops.use_backend(backend):
        graph = torch.cuda.CUDAGraph()
        with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: this slice program has no plan yet"):
            with torch.cuda.graph(graph):
                dv365_ops.sliced_pool(*args)
        torch.cuda.synchronize()
        # outside a capture it is planned and runs
        dv365_ops.sliced_pool(*args)


def test_plan_slices_of_a_device_program_is_the_native_ops_plan():
    module = _module()
    explicit, implicit, request_ts = _inputs(3)
    prog = module.programs["explicit"]
    prog_i, prog_f = prog.prog_i.to("cuda"), prog.prog_f.to("cuda")  # fresh copies: never planned
    tables = [module.tables[n].detach() for n in prog.tables]
    counts = (len(tables), explicit.cats.shape[0], explicit.floats.shape[0])
    before = dv365_ops._C._plan_builds()
    plan_i, plan_f = dv365_ops.plan_slices(prog_i, prog_f, *counts)
    assert plan_i.device.type == "cpu" and plan_f.device.type == "cpu"
    assert dv365_ops._C._plan_builds() - before == 1
    # the native op finds that plan: nothing is built
    with dv365_ops.use_backend("native"):
        dv365_ops.sliced_pool(tables, prog.ids(explicit), explicit.offsets, explicit.ts, explicit.cats,
                              explicit.floats, request_ts, prog_i, prog_f)
    assert dv365_ops._C._plan_builds() - before == 1
    host_i, host_f = dv365_ops.plan_slices(prog_i.cpu(), prog_f.cpu(), *counts)
    torch.testing.assert_close(plan_i, host_i, rtol=0, atol=0)
    torch.testing.assert_close(plan_f, host_f, rtol=0, atol=0)
