"""dv365.models: the table-1 user towers, FSA against a plain-torch Algorithm 1, the DLRM backbone, DV365Model
(forward, gradients, loss masking, a short training run, torch.compile of the head) and the config."""

import dataclasses
import math
import types

import pytest
import torch
import torch.nn.functional as F
import yaml

import dv365_ops
from dv365.data import Examples, Loader, SynthConfig, TASKS, generate, open_dataset
from dv365.models import (
    TOWERS,
    BackboneConfig,
    DLRMBackbone,
    DV365Model,
    EncoderLayer,
    FunnelSummarization,
    LinearCompression,
    MLPDimWise,
    MLPTokenWise,
    ModelConfig,
    ModelConfigError,
    ModelOutput,
    PassThrough,
    TowerConfig,
    TransformerDimWise,
    TransformerTokenWise,
    UserTower,
    build_tower,
)
from dv365.spec import load_default_spec

TINY = SynthConfig(mean_length=300, max_length=2_000, num_items=400, num_authors=60, num_topics=12, users_per_shard=16)


def _tower_args(name: str, n: int) -> dict:
    small = {"heads": 2} if name in ("T-L_d", "T-L_t", "FSA") else {}
    if name in ("pass_thru", "FSA"):
        return small
    return {**small, "num_out": 5 if n < 58 else 58}


# towers ----------------------------------------------------------------------------------------------------------

def test_towers_registry_has_the_table_1_names():
    assert list(TOWERS) == ["pass_thru", "LCE", "MLP_d", "MLP_t", "T-L_d", "T-L_t", "FSA"]
    expected = [PassThrough, LinearCompression, MLPDimWise, MLPTokenWise, TransformerDimWise, TransformerTokenWise,
                FunnelSummarization]
    assert list(TOWERS.values()) == expected
    assert all(issubclass(cls, UserTower) for cls in TOWERS.values())


@pytest.mark.parametrize("name", list(TOWERS))
@pytest.mark.parametrize("n, d", [(193, 8), (7, 16)])
def test_tower_shapes(name, n, d):
    tower = build_tower(name, n, d, **_tower_args(name, n))
    x = torch.randn(3, n, d)
    out = tower(x)
    expected_out = {"pass_thru": n, "FSA": tower.funnel_tokens + 8 if name == "FSA" else None}.get(name)
    expected_out = expected_out or _tower_args(name, n)["num_out"]
    assert (tower.num_tokens, tower.num_out, tower.dim) == (n, expected_out, d)
    assert out.shape == (3, expected_out, d) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # each user's embedding depends only on that user's tokens
    torch.testing.assert_close(tower(x[1:2]), out[1:2], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=rf"{type(tower).__name__}: input must be \[B, {n}, {d}\]"):
        tower(torch.randn(3, n + 1, d))


@pytest.mark.parametrize("name", [k for k in TOWERS if k != "pass_thru"])
def test_tower_gradient_reaches_every_parameter(name):
    tower = build_tower(name, 13, 8, **_tower_args(name, 13))
    x = torch.randn(4, 13, 8, requires_grad=True)
    (tower(x) * torch.randn(4, tower.num_out, 8)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in tower.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_pass_thru_is_the_identity():
    x = torch.randn(2, 9, 4)
    assert build_tower("pass_thru", 9, 4)(x) is x


def test_lce_is_a_linear_map_over_the_token_axis():
    lce = LinearCompression(11, 6, num_out=4)
    x = torch.randn(3, 11, 6, dtype=torch.float64)
    lce = lce.double()
    expected = torch.einsum("on,bnd->bod", lce.proj.weight, x) + lce.proj.bias[None, :, None]
    torch.testing.assert_close(lce(x), expected)


def test_mlp_towers_apply_their_mlp_on_the_right_axis():
    x = torch.randn(2, 9, 6)
    dim_wise = MLPDimWise(9, 6, num_out=3, hidden=(5,))
    tokens = dim_wise.mlp[2](torch.relu(dim_wise.mlp[0](x)))  # per token over D
    torch.testing.assert_close(dim_wise(x), dim_wise.lce(tokens))
    token_wise = MLPTokenWise(9, 6, num_out=3, hidden=(5, 4))
    h = torch.relu(token_wise.mlp[2](torch.relu(token_wise.mlp[0](x.transpose(1, 2)))))  # per dimension over N
    expected = torch.einsum("on,bdn->bod", token_wise.lce.proj.weight, h) + token_wise.lce.proj.bias[:, None]
    torch.testing.assert_close(token_wise(x), expected)


@pytest.mark.parametrize("cls", [TransformerDimWise, TransformerTokenWise])
def test_transformer_tower_compress_last_keeps_the_last_tokens(cls):
    x = torch.randn(2, 9, 6)
    last = cls(9, 6, num_out=4, heads=2, compress="last")
    full = last.layers
    u = x.transpose(1, 2) if cls.token_wise else x
    if last.position is not None:
        u = u + last.position
    for layer in full:
        u = layer(u)
    tokens = u.transpose(1, 2) if cls.token_wise else u
    torch.testing.assert_close(last(x), tokens[:, -4:])
    with pytest.raises(ValueError, match="compress='last' keeps at most num_tokens=9 tokens, got num_out=10"):
        cls(9, 6, num_out=10, compress="last")


@pytest.mark.parametrize("width, heads", [(12, 3), (7, 1)])
def test_encoder_layer_equals_torch_transformer_encoder_layer(width, heads):
    """Eq. 11 with heads * head_dim == width is nn.TransformerEncoderLayer (post-norm) with the same weights."""
    ours = EncoderLayer(width, heads, ffn_dim=10).double()
    ref = torch.nn.TransformerEncoderLayer(width, heads, dim_feedforward=10, dropout=0.0, batch_first=True).double()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(ours.attn.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(ours.attn.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(ours.attn.out.weight)
        ref.self_attn.out_proj.bias.copy_(ours.attn.out.bias)
        ref.linear1.load_state_dict(ours.ff[0].state_dict())
        ref.linear2.load_state_dict(ours.ff[3].state_dict())
        ref.norm1.load_state_dict(ours.norm1.state_dict())
        ref.norm2.load_state_dict(ours.norm2.state_dict())
    ref.eval()
    u = torch.randn(3, 5, width, dtype=torch.float64)
    torch.testing.assert_close(ours(u), ref(u))


# FSA -------------------------------------------------------------------------------------------------------------

def _ref_pool(u, stride):
    """Mean over windows of ``stride`` of the last axis, the last window averaging what it has (no dv365 op)."""
    n = u.shape[-1]
    return torch.stack([u[..., i : i + stride].mean(-1) for i in range(0, n, stride)], dim=-1)


def _ref_encoder_layer(layer, u):
    """Eq. 11 by hand: multi-head attention with explicit softmax, residual, layer norm, FFN."""
    a = layer.attn
    h_, hd = a.heads, a.head_dim
    q, k, v = (u @ a.qkv.weight.T + a.qkv.bias).split(h_ * hd, dim=-1)
    heads = []
    for i in range(h_):
        sl = slice(i * hd, (i + 1) * hd)
        scores = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(hd)
        heads.append(torch.softmax(scores, dim=-1) @ v[..., sl])
    att = torch.cat(heads, -1) @ a.out.weight.T + a.out.bias
    h = F.layer_norm(u + att, (u.shape[-1],), layer.norm1.weight, layer.norm1.bias)
    ff = torch.relu(h @ layer.ff[0].weight.T + layer.ff[0].bias) @ layer.ff[3].weight.T + layer.ff[3].bias
    return F.layer_norm(h + ff, (u.shape[-1],), layer.norm2.weight, layer.norm2.bias)


def _ref_fsa(fsa, x):
    """Algorithm 1 on the token-wise view, plus the LCE branch, stacked — in plain torch."""
    u = x.transpose(1, 2)
    for i, block in enumerate(fsa.blocks):
        if i > 0:
            u = _ref_pool(u, fsa.strides[i])
        for layer in block.layers:
            u = _ref_encoder_layer(layer, u)
    lce = torch.einsum("on,bnd->bod", fsa.lce.proj.weight, x) + fsa.lce.proj.bias[:, None]
    return torch.cat([u.transpose(1, 2), lce], dim=1)


@pytest.mark.parametrize("n, d, kwargs", [
    (193, 8, {}),
    (13, 6, {"heads": 3, "layers_per_block": 2}),
    (23, 4, {"blocks": 4, "strides": [1, 2, 3, 2], "heads": 2, "ffn_multiplier": 1.5, "num_out": 6}),
])
def test_fsa_matches_plain_torch_algorithm_1(n, d, kwargs):
    fsa = FunnelSummarization(n, d, **kwargs).double()
    x = torch.randn(3, n, d, dtype=torch.float64)
    torch.testing.assert_close(fsa(x), _ref_fsa(fsa, x))


def test_fsa_funnel_shapes_with_odd_token_counts():
    fsa = FunnelSummarization(193, 8)
    assert fsa.widths == (193, 97, 49) and fsa.strides == (1, 2, 2)
    assert (fsa.funnel_tokens, fsa.lce_tokens, fsa.num_out) == (49, 8, 57)
    assert [b.width for b in fsa.blocks] == [193, 97, 49]
    assert [layer.norm1.normalized_shape for b in fsa.blocks for layer in b.layers] == [(193,), (97,), (49,)]
    assert FunnelSummarization(200, 8).num_out == 58  # the paper's 200 -> 100 -> 50 + 8
    fsa58 = FunnelSummarization(193, 8, num_out=58)
    assert (fsa58.lce_tokens, fsa58.num_out) == (9, 58)
    no_lce = FunnelSummarization(193, 8, lce_tokens=0)
    assert no_lce.lce is None and no_lce(torch.randn(2, 193, 8)).shape == (2, 49, 8)
    assert FunnelSummarization(7, 4, blocks=3).widths == (7, 4, 2)


def test_fsa_pools_with_token_pool_on_the_token_wise_view(monkeypatch):
    calls = []
    real = dv365_ops.token_pool

    def spy(u, stride):
        calls.append((tuple(u.shape), stride))
        return real(u, stride)

    monkeypatch.setattr(dv365_ops, "token_pool", spy)
    fsa = FunnelSummarization(193, 8, heads=2)
    fsa(torch.randn(2, 193, 8))
    assert calls == [((2, 8, 193), 2), ((2, 8, 97), 2)]  # [B, D, N]: the token axis N is pooled


@pytest.mark.parametrize("kwargs, message", [
    ({"strides": [2, 2, 2]}, r"strides\[0\] must be 1 \(Algorithm 1 does not pool before the first block\), got 2"),
    ({"strides": [1, 2]}, r"strides \[1, 2\] must have one entry per block \(blocks=3\)"),
    ({"strides": 0}, "strides must be an integer >= 1, got 0"),
    ({"num_out": 40}, r"num_out=40 is below the funnel's 49 output tokens \(193 -> 97 -> 49\)"),
    ({"num_out": 58, "lce_tokens": 8}, "lce_tokens=8 and num_out=58 disagree"),
    ({"heads": 0}, "heads must be an integer >= 1, got 0"),
    ({"dropout": 1.5}, r"dropout must be a number in \[0, 1\), got 1.5"),
    ({"activation": "tanh"}, "activation must be one of"),
    ({"blocks": 0}, "blocks must be an integer >= 1, got 0"),
])
def test_fsa_rejects_impossible_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FunnelSummarization(193, 8, **kwargs)


def test_build_tower_errors_name_the_tower_or_argument():
    with pytest.raises(ValueError, match=r"build_tower: unknown tower 'fsa' \(did you mean 'FSA'\?\); the towers "
                                         r"are \['pass_thru', 'LCE', 'MLP_d', 'MLP_t', 'T-L_d', 'T-L_t', 'FSA'\]"):
        build_tower("fsa", 193, 8)
    with pytest.raises(ValueError, match=r"build_tower: tower 'LCE' has no argument 'blocks'; it accepts "
                                         r"\['num_out', 'bias'\]"):
        build_tower("LCE", 193, 8, blocks=2)
    with pytest.raises(ValueError, match="LinearCompression: num_out must be an integer >= 1, got 0"):
        build_tower("LCE", 193, 8, num_out=0)


# backbone --------------------------------------------------------------------------------------------------------

def test_dlrm_backbone_interaction_is_the_upper_triangle_of_dot_products():
    bb = DLRMBackbone(3, 4, 2, {"a": 10, "b": 7}, embedding_dim=5, bottom_mlp=(6,), top_mlp=(8,), num_tasks=9,
                      sparse=False).double()
    user, dense = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    ids = torch.tensor([[1, 6], [9, 0]])
    logits, reg = bb(user, dense, ids)
    assert logits.shape == (2, 9) and reg.shape == (2,)
    z = bb.bottom(torch.cat([user.reshape(2, -1), dense], 1))
    vecs = [z, bb.embeddings["a"](ids[:, 0]), bb.embeddings["b"](ids[:, 1])]
    dots = torch.stack([(vecs[i] * vecs[j]).sum(1) for i in range(3) for j in range(i + 1, 3)], 1)
    out = bb.heads(bb.top(torch.cat([z, dots], 1)))
    torch.testing.assert_close(logits, out[:, :9])
    torch.testing.assert_close(reg, out[:, 9])


# the full model --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    generate(32, 0, TINY).write(path)
    return open_dataset(path)


@pytest.fixture(scope="module")
def batches(dataset):
    return list(Loader(dataset, batch_size=16, prefetch=0))


def _small_config(tower="FSA", sparse=True, **args) -> ModelConfig:
    if tower == "FSA":
        args = {"heads": 2, **args}
    return ModelConfig(dim=8, tower=TowerConfig(tower, args), sparse=sparse,
                       backbone=BackboneConfig(embedding_dim=8, bottom_mlp=(16,), top_mlp=(16,), user_buckets=101))


def _model(dataset, config=None) -> DV365Model:
    return DV365Model(load_default_spec(), config or _small_config(), dataset.vocab_sizes)


def test_model_forward_shapes(dataset, batches):
    model = _model(dataset)
    batch = batches[0]
    out = model(batch)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (16, len(TASKS)) and out.logits.dtype == torch.float32
    assert out.watch_time.shape == (16,) and out.watch_time.dtype == torch.float32
    assert out.user_embedding.shape == (16, 57, 8)
    ex = batch.examples
    torch.testing.assert_close(model.embed(batch.explicit, batch.implicit, ex.request_ts), out.user_embedding)
    # one user's row does not depend on the rest of the batch
    lengths = torch.stack([batch.explicit.offsets.diff(), batch.implicit.offsets.diff()], 1)
    pooled = model.pooling(batch.explicit, batch.implicit, ex.request_ts)
    head = model.head(pooled[:1], lengths[:1], ex.user_id[:1], ex.item_id[:1], ex.author_id[:1], ex.topic_id[:1],
                      ex.media_type[:1], ex.video_duration[:1], ex.video_duration_mask[:1])
    torch.testing.assert_close(head[0], out.logits[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("tower", ["FSA", "pass_thru", "T-L_t"])
def test_model_gradients_reach_every_parameter(dataset, batches, sparse, tower):
    args = {"num_out": 20} if tower == "T-L_t" else {}
    model = _model(dataset, _small_config(tower, sparse, **args))
    out = model(batches[0])
    model.loss(out, batches[0]).backward()
    sparse_ids = {id(p) for p in model.sparse_parameters()}
    dense_ids = {id(p) for p in model.dense_parameters()}
    assert not sparse_ids & dense_ids and sparse_ids | dense_ids == {id(p) for p in model.parameters()}
    expected_sparse = list(model.pooling.tables.values()) + [e.weight for e in model.backbone.embeddings.values()]
    assert [id(p) for p in model.sparse_parameters()] == ([id(p) for p in expected_sparse] if sparse else [])
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.is_sparse == (sparse and id(p) in {id(q) for q in expected_sparse}), name
        g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
        assert g.abs().sum() > 0, name


def _examples(labels, label_mask, watch_time, watch_time_mask) -> Examples:
    b = labels.shape[0]
    z = torch.zeros(b, dtype=torch.int64)
    return Examples(user_id=z, request_ts=z, item_id=z, author_id=z, topic_id=z, media_type=z.to(torch.int8),
                    video_duration=torch.zeros(b), video_duration_mask=torch.zeros(b, dtype=torch.bool),
                    labels=labels, label_mask=label_mask, watch_time=watch_time, watch_time_mask=watch_time_mask)


def test_loss_terms_mask_unobserved_labels_and_watch_times(dataset):
    model = _model(dataset)
    logits = torch.zeros(3, 9)
    logits[0, 0], logits[1, 0] = 2.0, -1.0
    labels = torch.zeros(3, 9)
    labels[0, 0] = 1.0
    label_mask = torch.ones(3, 9, dtype=torch.bool)
    label_mask[2, :] = False  # row 2 observed nothing ...
    label_mask[1, 4] = False
    labels[2] = float("nan")  # ... and whatever it holds must not matter
    labels[1, 4] = 7.0
    watch = torch.tensor([math.e - 1, 3.0, float("nan")])
    watch_mask = torch.tensor([True, True, False])
    pred = torch.tensor([0.5, math.log1p(3.0), 1e6])
    out = ModelOutput(logits=logits, watch_time=pred, user_embedding=torch.zeros(3, 1, 1))
    batch = types.SimpleNamespace(examples=_examples(labels, label_mask, watch, watch_mask))
    sums, counts = model.loss_terms(out, batch)
    assert sums.dtype == counts.dtype == torch.float32 and sums.shape == counts.shape == (10,)
    ln2 = math.log(2)
    expected_sums = [math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))] + [2 * ln2] * 8
    expected_sums[4] = ln2
    expected_sums.append((0.5 - 1.0) ** 2)
    torch.testing.assert_close(sums, torch.tensor(expected_sums))
    torch.testing.assert_close(counts, torch.tensor([2.0, 2, 2, 2, 1, 2, 2, 2, 2, 2]))


def test_total_loss_is_the_mean_per_task_plus_weighted_mse():
    sums = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    counts = torch.tensor([2.0, 1, 0, 4, 5, 6, 7, 8, 9, 4])
    loss = DV365Model.total_loss(sums, counts, 0.5)
    expected = 0.5 + 2 + 3 + 1 + 1 + 1 + 1 + 1 + 1 + 0.5 * 2.5  # an empty task divides by max(0, 1)
    assert loss.item() == pytest.approx(expected)
    # DDP: per-rank sums with the global counts add up to one process's loss
    a, b = sums * 0.25, sums * 0.75
    assert (DV365Model.total_loss(a, counts, 0.5) + DV365Model.total_loss(b, counts, 0.5)).item() == pytest.approx(expected)


def test_short_training_run_lowers_the_loss(dataset, batches):
    torch.manual_seed(0)
    model = _model(dataset)
    dense = torch.optim.Adam(model.dense_parameters(), lr=5e-3)
    sparse = torch.optim.Adagrad(model.sparse_parameters(), lr=0.05)
    train = batches[:4]

    def eval_loss() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            sums, counts = map(sum, zip(*(model.loss_terms(model(b), b) for b in train)))
        model.train()
        bce = DV365Model.total_loss(sums, counts, 0.0).item()
        return bce, DV365Model.total_loss(sums, counts, 1.0).item() - bce

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: with other jobs on the cores, OpenMP waits dominate at 2 threads
    try:
        before = eval_loss()
        for _ in range(5):
            for b in train:
                dense.zero_grad()
                sparse.zero_grad()
                model.loss(model(b), b).backward()
                dense.step()
                sparse.step()
        after = eval_loss()
    finally:
        torch.set_num_threads(threads)
    # both the nine BCE terms and the watch-time MSE fall
    assert after[0] < 0.9 * before[0] and after[1] < 0.5 * before[1], (before, after)


def test_bf16_autocast_keeps_outputs_and_losses_float32(dataset, batches):
    model = _model(dataset)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batches[0])
        sums, counts = model.loss_terms(out, batches[0])
    assert out.logits.dtype == out.watch_time.dtype == sums.dtype == torch.float32
    loss = DV365Model.total_loss(sums, counts, 1.0)
    assert torch.isfinite(loss)
    loss.backward()


@pytest.mark.compile
def test_compiled_head_fullgraph_matches_eager(dataset, batches):
    torch._dynamo.reset()
    model = _model(dataset)
    eager = model(batches[0])
    # aot_eager traces the whole head with dynamo and AOT autograd (what fullgraph must pass) without paying for
    # inductor's C++ code generation on the CPU
    model.compile_head(backend="aot_eager")
    compiled = model(batches[0])
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled.watch_time, eager.watch_time, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled.user_embedding, eager.user_embedding, rtol=1e-4, atol=1e-4)
    model.loss(compiled, batches[0]).backward()
    assert all(p.grad is not None for p in model.tower.parameters())


def test_head_with_embeddings_looked_up_outside_equals_head(dataset, batches):
    """The CUDA-graph path looks the backbone's embeddings up before the head: the same outputs and gradients."""
    model = _model(dataset)
    b = batches[0]
    ex = b.examples
    pooled = model.pooling(b.explicit, b.implicit, ex.request_ts).detach()
    lengths = torch.stack([b.explicit.offsets.diff(), b.implicit.offsets.diff()], dim=1)
    fields = (ex.user_id, ex.item_id, ex.author_id, ex.topic_id, ex.media_type)
    results = []
    for outside in (False, True):
        model.zero_grad(set_to_none=True)
        embedded = model.backbone_lookup(*fields) if outside else None
        out = model.head(pooled, lengths, *fields, ex.video_duration, ex.video_duration_mask, embedded)
        (out[0].sum() + out[1].sum()).backward()
        grads = [p.grad.to_dense() if p.grad.is_sparse else p.grad for p in model.backbone.parameters()]
        results.append((out, grads))
    for a, b_ in zip(results[0][0], results[1][0]):
        assert torch.equal(a, b_)
    for a, b_ in zip(results[0][1], results[1][1]):
        assert torch.equal(a, b_)
    assert any(p.grad.is_sparse for p in model.backbone.embedding_parameters())


@pytest.mark.compile
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_reduce_overhead_head_trains_like_eager_with_cuda_graphs(dataset, batches):
    """compile_head(mode="reduce-overhead") replays the head as CUDA graphs (none skipped, sparse embedding
    gradients included), trains like the eager head, and its outputs stay valid after the next call."""
    from torch._dynamo.utils import counters

    from dv365.train.optim import RowWiseAdagrad

    torch._dynamo.reset()
    counters.clear()
    runs = {}
    for mode in (None, "reduce-overhead"):
        torch.manual_seed(0)
        model = _model(dataset).cuda()
        if mode:
            model.compile_head(mode=mode)
        dense = torch.optim.AdamW(model.dense_parameters(), lr=1e-3, fused=True)
        sparse = RowWiseAdagrad(model.sparse_parameters(), lr=0.05)
        same_shape = [b for b in batches if len(b.examples) == len(batches[0].examples)]
        kept = []
        for b in same_shape[:3] * 2:
            b = b.to("cuda")
            out = model(b)
            kept.append(out.logits)
            dense.zero_grad()
            sparse.zero_grad()
            model.loss(out, b).backward()
            dense.step()
            sparse.step()
        runs[mode] = (kept, [p.detach().clone() for p in model.parameters()])
    assert counters["inductor"]["cudagraph_skips"] == 0
    for a, b in zip(runs[None][0], runs["reduce-overhead"][0]):
        torch.testing.assert_close(b, a, rtol=2e-3, atol=2e-3)  # every step's logits, read after the last step
    for a, b in zip(runs[None][1], runs["reduce-overhead"][1]):
        # Adam's step is about lr whatever the gradient's size: a near-zero gradient whose rounding differs
        # between the kernels may move a weight by up to lr (1e-3) a step the other way
        torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-2)


def test_model_repr_reads_well(dataset):
    text = repr(_model(dataset))
    assert text.startswith("DV365Model(\n  slices=193, dim=8, tower='FSA' (193 -> 57 tokens), tasks=9 + watch_time")
    assert "FunnelSummarization(\n    tokens=193 -> 57 (funnel 193 -> 97 -> 49 + 8 LCE), dim=8" in text
    assert "pool stride 2: 193 -> 97, width=97" in text
    assert "DLRMBackbone(\n    user=57x8, dense=4, sparse=['user_id', 'item_id', 'author_id', 'topic_id', 'media_type']" in text


def test_model_rejects_missing_vocab_sizes():
    with pytest.raises(ValueError, match=r"DV365Model: vocab_sizes lacks \['topic_id'\]"):
        DV365Model(load_default_spec(), _small_config(), {"media_id": 10, "author_id": 10})


# config ----------------------------------------------------------------------------------------------------------

def test_config_round_trips_through_yaml():
    config = ModelConfig(
        dim=16,
        tower=TowerConfig("FSA", {"blocks": 2, "strides": [1, 2], "lce_tokens": 9}),
        backbone=BackboneConfig(embedding_dim=8, bottom_mlp=(32, 16), top_mlp=(64,), user_buckets=0, dropout=0.1),
        sparse=False,
        watch_time_weight=0.25,
    )
    data = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    assert data["backbone"]["bottom_mlp"] == [32, 16]
    assert ModelConfig.from_dict(data) == config
    assert ModelConfig.from_dict({}) == ModelConfig()
    assert ModelConfig().tower.name == "FSA" and ModelConfig().backbone.top_mlp == (128, 64)


@pytest.mark.parametrize("data, message", [
    ({"tower": {"nme": "FSA"}}, r"config key 'tower.nme' is unknown \(did you mean 'name'\?\)"),
    ({"backbone": {"top": [1]}}, r"config key 'backbone.top' is unknown \(did you mean 'top_mlp'\?\)"),
    ({"dims": 3}, r"config key 'dims' is unknown \(did you mean 'dim'\?\)"),
    ({"tower": {"name": "FZA"}}, r"^tower: TowerConfig.name: unknown tower 'FZA' \(did you mean 'FSA'\?\)"),
    ({"tower": {"name": "fsa"}}, r"^tower: TowerConfig.name: unknown tower 'fsa' \(did you mean 'FSA'\?\)"),
    ({"tower": {"args": {"blcks": 2}}}, r"^tower: TowerConfig.args.blcks: tower 'FSA' has no such argument "
                                        r"\(did you mean 'blocks'\?\)"),
    ({"backbone": {"top_mlp": 5}}, r"backbone.top_mlp: expected a list, got 5"),
    ({"backbone": {"user_buckets": -1}}, r"^backbone: BackboneConfig.user_buckets: must be >= 0 \(0 = no user-id"),
    ({"dim": 0}, r"ModelConfig.dim: must be an integer >= 1, got 0"),
    ({"sparse": "yes"}, r"sparse: expected true or false, got 'yes'"),
])
def test_config_errors_name_the_key(data, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(data)


def test_config_errors_nested_in_the_training_config_carry_the_full_path():
    from dv365.configs import ConfigError, from_dict

    @dataclasses.dataclass
    class Outer:
        model: ModelConfig = dataclasses.field(default_factory=ModelConfig)

    with pytest.raises(ConfigError, match=r"^model.tower: TowerConfig.name: unknown tower 'FZA'"):
        from_dict(Outer, {"model": {"tower": {"name": "FZA"}}})
    with pytest.raises(ConfigError, match=r"^config key 'model.backbone.top' is unknown"):
        from_dict(Outer, {"model": {"backbone": {"top": [3]}}})
    with pytest.raises(ModelConfigError, match=r"^TowerConfig.args.blcks: tower 'FSA' has no such argument"):
        TowerConfig("FSA", {"blcks": 2})
