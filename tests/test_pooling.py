"""MultiSlicePooling and sliced_kjt (paper eq. 2-6, mean / weighted mean pooling; docs/design.md#slices) against a
naive per-slice pooling built from the per-event oracle, and against TorchRec's EmbeddingBagCollection."""

from __future__ import annotations

import pytest
import torch
from timeline_data import naive_slices, random_batch, random_request_ts, random_spec
from tolerances import assert_close

from dv365.pooling import MultiSlicePooling, embedding_bag_configs, sliced_kjt
from dv365.spec import load_default_spec

NUM_ROWS = {"media_id": 50, "author_id": 50, "topic_id": 50}


def _inputs(lengths_e: list[int], lengths_i: list[int], device):
    request_ts = random_request_ts(len(lengths_e))
    explicit = random_batch("explicit", lengths_e, request_ts)
    implicit = random_batch("implicit", lengths_i, request_ts)
    return explicit.to(device), implicit.to(device), request_ts.to(device)


def _naive_pool(spec, tables: dict[str, torch.Tensor], explicit, implicit, request_ts):
    """``[B, S, D]`` and weight sums: each slice's weighted mean written out per (slice, user); differentiable."""
    batches = {b.kind: b.to("cpu") for b in (explicit, implicit) if b is not None}
    selected = naive_slices(spec, batches, request_ts.cpu())
    num_users = request_ts.numel()
    rows, wsum = [], torch.zeros(num_users, len(spec), dtype=torch.float64)
    for s, per_user in zip(spec.slices, selected):
        table = tables[s.table]
        acc = torch.float64 if table.dtype == torch.float64 else torch.float32
        row = []
        for b, kept in enumerate(per_user):
            if not kept:
                row.append(torch.zeros(table.shape[1], dtype=acc, device=table.device))
                continue
            ids = torch.tensor([i for i, _ in kept], device=table.device)
            w = torch.tensor([w for _, w in kept], dtype=torch.float32, device=table.device).to(acc)
            if float(w.sum()) == 0:  # kept events whose weights are all 0 (s = 0 > s0 < 0): pools to zeros
                row.append(torch.zeros(table.shape[1], dtype=acc, device=table.device))
                continue
            row.append((table.index_select(0, ids).to(acc) * w[:, None]).sum(0) / w.sum())
            wsum[b, spec.names.index(s.name)] = float(w.sum())
        rows.append(torch.stack(row))
    return torch.stack(rows, 1), wsum


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_module_matches_naive_pooling_random_spec(device, dtype):
    spec = random_spec(23, dim=5)
    module = MultiSlicePooling(spec, dtype=dtype).to(device)
    explicit, implicit, request_ts = _inputs([31, 0, 1, 17], [12, 40, 0, 3], device)
    out, wsum = module(explicit, implicit, request_ts, return_weight_sum=True)
    assert out.shape == (4, 23, 5) and out.dtype == dtype and wsum.dtype == torch.float32
    expected, expected_wsum = _naive_pool(spec, dict(module.tables), explicit, implicit, request_ts)
    assert_close(out, expected.to(dtype))
    assert_close(wsum.cpu(), expected_wsum.float())


def test_module_matches_naive_pooling_default_spec(device):
    spec = load_default_spec(num_rows=NUM_ROWS)
    module = MultiSlicePooling(spec, dim=4).to(device)
    explicit, implicit, request_ts = _inputs([9, 0, 25], [30, 2, 0], device)
    out = module(explicit, implicit, request_ts)
    assert out.shape == (3, len(spec), 4)
    expected, _ = _naive_pool(spec, dict(module.tables), explicit, implicit, request_ts)
    assert_close(out, expected)


def test_bfloat16_tables(device):
    spec = random_spec(11, dim=8)
    module = MultiSlicePooling(spec, dtype=torch.bfloat16).to(device)
    explicit, implicit, request_ts = _inputs([20, 5], [7, 33], device)
    out = module(explicit, implicit, request_ts)
    assert out.dtype == torch.bfloat16
    expected, _ = _naive_pool(spec, dict(module.tables), explicit, implicit, request_ts)
    assert_close(out, expected.to(torch.bfloat16))


def test_gradients_flow_to_tables(device):
    spec = random_spec(17, dim=3)
    module = MultiSlicePooling(spec, dtype=torch.float64).to(device)
    explicit, implicit, request_ts = _inputs([25, 4, 0], [6, 0, 30], device)
    out = module(explicit, implicit, request_ts)
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    leaves = {name: t.detach().clone().requires_grad_(True) for name, t in module.tables.items()}
    expected, _ = _naive_pool(spec, leaves, explicit, implicit, request_ts)
    (expected * grad_out).sum().backward()
    used = {s.table for s in spec.slices}
    for name, table in module.tables.items():
        if name not in used:
            assert table.grad is None, name
            continue
        # the naive pooling builds no graph edge to a table whose slices keep no event: its gradient is zero
        expected_grad = leaves[name].grad if leaves[name].grad is not None else torch.zeros_like(leaves[name])
        # float32 tolerance: the op's backward divides by its float32 weight_sum output
        assert_close(table.grad, expected_grad, dtype=torch.float32)
    assert any(t.grad.abs().sum() > 0 for t in module.tables.values() if t.grad is not None)


def test_module_dtype_cast_keeps_program_bounds():
    spec = random_spec(9, dim=4)
    module = MultiSlicePooling(spec).double()
    explicit, implicit, request_ts = _inputs([15, 3], [22, 9], "cpu")
    expected, _ = _naive_pool(spec, dict(module.tables), explicit, implicit, request_ts)
    assert_close(module(explicit, implicit, request_ts), expected)


def test_module_one_timeline_only():
    spec = load_default_spec(num_rows=NUM_ROWS)
    implicit_only = type(spec)(slices=spec.timeline_slices("implicit"), tables=spec.tables, dim=spec.dim)
    module = MultiSlicePooling(implicit_only, dim=4)
    _, implicit, request_ts = _inputs([4, 9], [11, 0], "cpu")
    out = module(None, implicit, request_ts)
    expected, _ = _naive_pool(implicit_only, dict(module.tables), None, implicit, request_ts)
    assert_close(out, expected)


def test_sparse_gradients(device):
    spec = random_spec(8, dim=4)
    dense = MultiSlicePooling(spec, dtype=torch.float64).to(device)
    sparse = MultiSlicePooling(spec, dtype=torch.float64, sparse=True).to(device)
    sparse.load_state_dict(dense.state_dict())
    explicit, implicit, request_ts = _inputs([14, 6], [9, 21], device)
    grad_out = torch.randn(2, 8, 4, dtype=torch.float64, device=device)
    (dense(explicit, implicit, request_ts) * grad_out).sum().backward()
    (sparse(explicit, implicit, request_ts) * grad_out).sum().backward()
    for name in {s.table for s in spec.slices}:
        assert sparse.tables[name].grad.is_sparse
        assert_close(sparse.tables[name].grad.to_dense(), dense.tables[name].grad)


@pytest.mark.compile
def test_module_compiles_fullgraph():
    spec = random_spec(7, dim=4)
    module = MultiSlicePooling(spec)
    explicit, implicit, request_ts = _inputs([9, 2], [0, 14], "cpu")
    compiled = torch.compile(module, fullgraph=True)
    assert_close(compiled(explicit, implicit, request_ts), module(explicit, implicit, request_ts))


def test_module_errors():
    spec = random_spec(6)
    module = MultiSlicePooling(spec)
    explicit, implicit, request_ts = _inputs([3, 4], [5, 6], "cpu")
    with pytest.raises(ValueError, match=r"tables \['exp_media', .*\] have no num_rows"):
        MultiSlicePooling(load_default_spec())
    with pytest.raises(ValueError, match=r"explicit must be a TimelineBatch of kind 'explicit', got 'implicit'"):
        module(implicit, implicit, request_ts)
    with pytest.raises(ValueError, match=r"request_ts must be int64 of shape \(2,\)"):
        module(explicit, implicit, request_ts[:1])
    with pytest.raises(ValueError, match=r"explicit has 2 users but implicit has 3"):
        module(explicit, _inputs([1, 1, 1], [1, 1, 1], "cpu")[1], request_ts)
    if spec.timeline_slices("explicit"):
        with pytest.raises(ValueError, match=r"MultiSlicePooling: the spec has explicit slices but no explicit timeline"):
            module(None, implicit, request_ts)
    with pytest.raises(ValueError, match=r"sliced_kjt: request_ts must be int64 of shape \(2,\)"):
        sliced_kjt(spec, explicit, implicit, request_ts.int())


# TorchRec interop ---------------------------------------------------------------------------------
def test_sliced_kjt_matches_oracle(device):
    pytest.importorskip("torchrec")  # an optional peer (the GPU image has none)
    spec = random_spec(19)
    explicit, implicit, request_ts = _inputs([13, 0, 27], [8, 19, 1], device)
    kjt = sliced_kjt(spec, explicit, implicit, request_ts)
    assert kjt.keys() == list(spec.names)
    selected = naive_slices(spec, {"explicit": explicit.to("cpu"), "implicit": implicit.to("cpu")}, request_ts.cpu())
    jt = kjt.to_dict()
    for s, per_user in zip(spec.slices, selected):
        assert jt[s.name].lengths().tolist() == [len(k) for k in per_user]
        assert jt[s.name].values().tolist() == [i for kept in per_user for i, _ in kept]
        want = torch.tensor([w for kept in per_user for _, w in kept], dtype=torch.float32)
        assert_close(jt[s.name].weights().cpu(), want)


def test_embedding_bag_collection_equals_module():
    pytest.importorskip("torchrec")
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    spec = load_default_spec(num_rows=NUM_ROWS)
    module = MultiSlicePooling(spec, dim=6)
    ebc = EmbeddingBagCollection(tables=embedding_bag_configs(spec, dim=6), device=torch.device("cpu"))
    for name, bag in ebc.embedding_bags.items():
        bag.weight.data.copy_(module.tables[name].data)
    explicit, implicit, request_ts = _inputs([21, 0, 7], [2, 30, 0], "cpu")
    pooled = module(explicit, implicit, request_ts)
    by_slice = ebc(sliced_kjt(spec, explicit, implicit, request_ts)).to_dict()
    unweighted = [i for i, s in enumerate(spec.slices) if not s.weighted]
    assert len(unweighted) > 180
    for i in unweighted:
        assert_close(by_slice[spec.names[i]], pooled[:, i])
