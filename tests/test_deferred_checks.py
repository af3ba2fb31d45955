"""Deferred data checks (dv365_ops.deferred): the mode's switch everywhere; on CUDA, a bad id is reported by the
next check (naming the op), not by the call, and only once; good input passes; a captured graph's replays report
into the flags too. CPU kernels raise at the call in either mode."""

import pytest
import torch
from timeline_data import random_batch, random_request_ts

import dv365_ops
from dv365.pooling import MultiSlicePooling
from dv365.spec import load_default_spec
from dv365_ops.testing import random_program, random_timeline

HAS_CUDA = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key("dv365::sliced_pool", "CUDA")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and the CUDA build")


@pytest.fixture(autouse=True)
def _restore_mode():
    before = dv365_ops.set_deferred_checks(False)
    yield
    dv365_ops.set_deferred_checks(before)


def _pool_args(device, bad_id=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = random_timeline([50, 0, 333, 7], table_rows=(97, 31), device=device, generator=g)
    prog_i, prog_f = random_program(12, generator=g)
    tables = [torch.randn(97, 16, device=device), torch.randn(31, 16, device=device)]
    ids = [i.clone() for i in data["ids"]]
    if bad_id:
        ids[1][200] = 31  # one past table 1's rows
    return (tables, ids, data["offsets"], data["ts"], data["cats"], data["floats"], data["request_ts"],
            prog_i.to(device), prog_f.to(device))


def test_the_mode_switches_and_restores():
    assert dv365_ops.deferred_checks_enabled() is False
    with dv365_ops.deferred_checks():
        assert dv365_ops.deferred_checks_enabled() is True
        with dv365_ops.deferred_checks(False):
            assert dv365_ops.deferred_checks_enabled() is False
        assert dv365_ops.deferred_checks_enabled() is True
    assert dv365_ops.deferred_checks_enabled() is False
    assert dv365_ops.set_deferred_checks(True) is False
    assert dv365_ops.set_deferred_checks(False) is True
    dv365_ops.check_deferred()  # nothing flagged: no error


def test_cpu_kernels_raise_at_the_call_in_deferred_mode():
    args = _pool_args("cpu", bad_id=True)
    with dv365_ops.deferred_checks():
        with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: .*ids\[1\]\[200\] = 31"):
            dv365_ops.sliced_pool(*args)
        dv365_ops.check_deferred()  # the CPU error was raised, nothing is left to report


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("op", ["sliced_pool", "sliced_pool_backward"])
def test_cuda_bad_ids_are_reported_by_the_next_check(op):
    good, bad = _pool_args("cuda"), _pool_args("cuda", bad_id=True)
    with dv365_ops.use_backend("native"):
        expected, _ = dv365_ops.sliced_pool(*good)
        with dv365_ops.deferred_checks(check_on_exit=False):
            if op == "sliced_pool":
                dv365_ops.sliced_pool(*bad)  # no error at the call
            else:
                pooled, wsum = dv365_ops.sliced_pool(*good)
                # the backward op (as the autograd formula calls it) given the bad ids
                torch.ops.dv365.sliced_pool_backward(torch.ones_like(pooled), wsum, bad[1], *bad[2:], [97, 31])
            with pytest.raises(RuntimeError, match=rf"dv365 deferred checks: dv365::{op} on cuda:0: ids must lie in"):
                dv365_ops.check_deferred()
            dv365_ops.check_deferred()  # reported once: the read cleared it
            again, _ = dv365_ops.sliced_pool(*good)
            dv365_ops.check_deferred()
        torch.testing.assert_close(again, expected)
        # out of deferred mode the call raises again, with the index
        with pytest.raises(RuntimeError, match=r"dv365::sliced_pool: .*ids\[1\]\[200\] = 31"):
            dv365_ops.sliced_pool(*bad)


@pytest.mark.cuda
@needs_cuda
def test_cuda_graph_replays_report_into_the_deferred_flags():
    torch.manual_seed(0)
    num_rows = {"media_id": 500, "author_id": 200, "topic_id": 200}
    module = MultiSlicePooling(load_default_spec(), dim=32, num_rows=num_rows, device="cuda")
    request_ts = random_request_ts(3)
    explicit = random_batch("explicit", [300, 0, 41], request_ts, num_ids=200).to("cuda")
    implicit = random_batch("implicit", [90, 700, 0], request_ts, num_ids=200).to("cuda")
    request_ts = request_ts.to("cuda")
    with dv365_ops.use_backend("native"), torch.no_grad(), dv365_ops.deferred_checks(check_on_exit=False):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            module(explicit, implicit, request_ts)  # plans both programs, makes the op's flag
        torch.cuda.current_stream().wait_stream(stream)
        dv365_ops.check_deferred()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            module(explicit, implicit, request_ts)
        graph.replay()
        dv365_ops.check_deferred()  # good data: nothing
        explicit.column("author_id")[5] = 10_000  # beyond the 200 rows, written into the graph's input in place
        graph.replay()
        with pytest.raises(RuntimeError, match=r"dv365::sliced_pool on cuda:0: ids must lie in"):
            dv365_ops.check_deferred()
