"""dv365.metrics: NE (paper eq. 12) against torcheval and TorchRec, AUC against a pairwise count and
torcheval / torchmetrics / sklearn (each where installed), MSE, hit rate @k hand cases and a brute-force
ranking, the MetricSet's batching, merge, checkpoint and a 2-process gloo sync."""

from __future__ import annotations

import io
import math
import os

import pytest
import torch

from dv365.data import TASKS
from dv365.metrics import (
    AUC,
    HitRate,
    MeanSquaredError,
    MetricSet,
    NormalizedEntropy,
    auc,
    hit_rate_at_k,
    mean_squared_error,
    normalized_entropy,
    relative_deltas,
    relative_mse_delta,
    relative_ne_delta,
)

T = len(TASKS)


def _examples(n: int, tasks: int = T, *, observed: float = 0.7, ties: bool = False, dtype=torch.float64):
    """Logits, 0/1 labels (NaN where unobserved), label_mask, per-example weights, watch time pred / target / mask."""
    logits = torch.randn(n, tasks, dtype=dtype) * 2
    if ties:  # few distinct scores, so AUC and hit rate meet many ties
        logits = torch.randint(-3, 4, (n, tasks)).to(dtype)
    labels = (torch.rand(n, tasks) < torch.sigmoid(logits.float() + 0.3 * torch.randn(n, tasks))).float()
    mask = torch.rand(n, tasks) < observed
    labels = labels.masked_fill(~mask, float("nan"))
    weights = torch.rand(n, dtype=torch.float64) * 3
    watch_pred, watch_target = torch.rand(n) * 60, torch.rand(n) * 60
    watch_mask = torch.rand(n) < 0.8
    return logits, labels, mask, weights, watch_pred, watch_target, watch_mask


def _ne_by_hand(logits, labels, weights=None):
    """NE of one task from the definition, in plain Python floats."""
    w = [1.0] * len(logits) if weights is None else [float(v) for v in weights]
    bce = 0.0
    for x, y, wi in zip(logits.tolist(), labels.tolist(), w):
        p = 1 / (1 + math.exp(-x))
        bce -= wi * (y * math.log(p) + (1 - y) * math.log(1 - p))
    p = sum(wi * y for y, wi in zip(labels.tolist(), w)) / sum(w)
    return (bce / sum(w)) / -(p * math.log(p) + (1 - p) * math.log(1 - p))


# ---------------------------------------------------------------------------------------------------------------
# NE


def test_ne_hand_values():
    # the constant predictor at the base rate has NE = 1 (its BCE is the entropy of the base rate)
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    base = torch.full((8,), math.log(0.25 / 0.75))
    torch.testing.assert_close(normalized_entropy(base, labels), torch.tensor(1.0, dtype=torch.float64), rtol=1e-12, atol=0)
    # a coin flip on a 25 % base rate: ln 2 / H(0.25)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert normalized_entropy(torch.zeros(8), labels).item() == pytest.approx(math.log(2) / h, rel=1e-12)
    # confident and right: NE near 0; confident and wrong: large
    assert normalized_entropy(torch.where(labels > 0, 20.0, -20.0), labels).item() < 1e-7
    assert normalized_entropy(torch.where(labels > 0, -5.0, 5.0), labels).item() > 5
    logits = torch.randn(40, dtype=torch.float64)
    y = (torch.rand(40) < 0.3).double()
    y[0], y[1] = 1, 0
    w = torch.rand(40, dtype=torch.float64)
    assert normalized_entropy(logits, y).item() == pytest.approx(_ne_by_hand(logits, y), rel=1e-12)
    assert normalized_entropy(logits, y, weights=w).item() == pytest.approx(_ne_by_hand(logits, y, w), rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_ne_matches_torcheval(weighted):
    binary_normalized_entropy = pytest.importorskip("torcheval.metrics.functional").binary_normalized_entropy

    logits, labels, _, weights, *_ = _examples(257, observed=1.0)
    w = weights.unsqueeze(1).expand_as(logits) if weighted else None
    ours = normalized_entropy(logits, labels, weights=weights if weighted else None)
    theirs = binary_normalized_entropy(
        logits.T.contiguous(), labels.T.double().contiguous(), weight=None if w is None else w.T.contiguous(),
        num_tasks=T, from_logits=True,
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=0)


@pytest.mark.parametrize("weighted", [False, True])
def test_ne_matches_torchrec_over_batches_with_masking(weighted):
    """TorchRec's NEMetric (running sums, probabilities, masking as weight 0) over the same batches."""
    pytest.importorskip("torchrec")
    from torchrec.metrics.metrics_config import RecComputeMode
    from torchrec.metrics.ne import NEMetric
    from torchrec.metrics.rec_metric import RecTaskInfo

    tasks = [RecTaskInfo(name=t, label_name=t, prediction_name=t, weight_name=t) for t in TASKS]
    batch = 16
    theirs = NEMetric(world_size=1, my_rank=0, batch_size=batch, tasks=tasks,
                      compute_mode=RecComputeMode.UNFUSED_TASKS_COMPUTATION, window_size=10_000)
    ours = NormalizedEntropy(T)
    for _ in range(5):
        logits, labels, mask, weights, *_ = _examples(batch)
        w = (weights.unsqueeze(1) if weighted else torch.ones(batch, 1, dtype=torch.float64)) * mask
        probs = torch.sigmoid(logits)
        y = labels.nan_to_num(0.0).double()
        theirs.update(predictions={t: probs[:, k] for k, t in enumerate(TASKS)},
                      labels={t: y[:, k] for k, t in enumerate(TASKS)},
                      weights={t: w[:, k] for k, t in enumerate(TASKS)})
        ours.update(logits, labels, mask, weights if weighted else None)
    got = theirs.compute()
    expected = torch.stack([got[f"ne-{t}|lifetime_ne"].reshape(()) for t in TASKS])
    torch.testing.assert_close(ours.compute(), expected, rtol=1e-10, atol=0)


def test_ne_matches_torchrec_compute_ne():
    pytest.importorskip("torchrec")
    from torchrec.metrics.ne import compute_ne, get_ne_states

    logits, labels, _, weights, *_ = _examples(100, 3, observed=1.0)
    w = weights.unsqueeze(0).expand(3, -1)
    states = get_ne_states(labels.T.double(), torch.sigmoid(logits.T), w, 1e-12)
    expected = compute_ne(states["cross_entropy_sum"], states["weighted_num_samples"], states["pos_labels"],
                          states["neg_labels"], 1e-12)
    torch.testing.assert_close(normalized_entropy(logits, labels, weights=weights), expected, rtol=1e-10, atol=0)


def test_ne_masked_labels_contribute_nothing():
    logits, labels, mask, weights, *_ = _examples(200, 1)
    logits = logits.clone()
    logits[~mask] = float("nan")  # unobserved rows may hold anything
    keep = mask[:, 0]
    got = normalized_entropy(logits[:, 0], labels[:, 0], mask[:, 0], weights)
    expected = normalized_entropy(logits[keep, 0], labels[keep, 0], weights=weights[keep])
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=0)
    # weight 0 is the same as masked
    torch.testing.assert_close(
        normalized_entropy(logits[:, 0].nan_to_num(0.0), labels[:, 0].nan_to_num(0.0), weights=weights * keep),
        expected, rtol=1e-13, atol=0)


def test_ne_integer_weights_equal_repeated_examples():
    logits, labels, *_ = _examples(60, 2, observed=1.0)
    reps = torch.randint(0, 4, (60,))
    torch.testing.assert_close(
        normalized_entropy(logits, labels, weights=reps.double()),
        normalized_entropy(logits.repeat_interleave(reps, 0), labels.repeat_interleave(reps, 0)),
        rtol=1e-12, atol=0)


def test_ne_batches_equal_one_shot(device):
    logits, labels, mask, weights, *_ = _examples(301)
    logits, labels, mask, weights = (t.to(device) for t in (logits, labels, mask, weights))
    whole = NormalizedEntropy(T)
    whole.update(logits, labels, mask, weights)
    parts = NormalizedEntropy(T)
    for idx in torch.tensor_split(torch.arange(301), [1, 50, 51, 200]):  # uneven, one empty-ish, one single
        idx = idx.to(device)
        parts.update(logits[idx], labels[idx], mask[idx], weights[idx])
    torch.testing.assert_close(parts.compute(), whole.compute(), rtol=1e-12, atol=0)
    assert torch.equal(parts.count, whole.count)
    assert parts.compute().device == logits.device


def test_ne_low_precision_logits():
    logits, labels, mask, *_ = _examples(64, dtype=torch.bfloat16)
    torch.testing.assert_close(normalized_entropy(logits, labels, mask),
                               normalized_entropy(logits.double(), labels, mask), rtol=1e-12, atol=0)


def test_ne_degenerate_tasks_do_not_raise():
    logits = torch.randn(6, 3, dtype=torch.float64)
    labels = torch.tensor([[1.0, 1, 0], [1, 1, 1], [0, 1, 0]] * 2)
    mask = torch.ones(6, 3, dtype=torch.bool)
    mask[:, 0] = False  # task 0: nothing observed
    m = NormalizedEntropy(3)
    m.update(logits, labels, mask)
    ne = m.compute()
    assert math.isnan(ne[0]) and m.count[0] == 0 and math.isnan(m.positive_rate()[0])
    assert ne[1] == float("inf")  # all positives: H(1) = 0
    assert torch.isfinite(ne[2])
    # before any update every task is NaN
    assert torch.isnan(NormalizedEntropy(2).compute()).all()


def test_ne_bad_inputs_name_the_argument():
    m = NormalizedEntropy(2)
    with pytest.raises(ValueError, match=r"NormalizedEntropy.update: logits must have shape \[B, 2\], got \(4, 3\)"):
        m.update(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="labels must have the shape"):
        m.update(torch.zeros(4, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"observed labels must lie in \[0, 1\], got 2.0"):
        m.update(torch.zeros(4, 2), torch.full((4, 2), 2.0))
    with pytest.raises(ValueError, match="label_mask must be a bool tensor"):
        m.update(torch.zeros(4, 2), torch.zeros(4, 2), torch.ones(4, 2))
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        m.update(torch.zeros(4, 2), torch.zeros(4, 2), weights=-torch.ones(4))
    with pytest.raises(ValueError, match=r"weights must have shape \[4\] or \[4, 2\]"):
        m.update(torch.zeros(4, 2), torch.zeros(4, 2), weights=torch.ones(3))
    with pytest.raises(ValueError, match="num_tasks must be a positive int"):
        NormalizedEntropy(0)
    assert m.count.sum() == 0  # nothing was added by the failed updates


def test_relative_deltas():
    assert relative_ne_delta(0.99, 1.0) == pytest.approx(-1.0)
    assert relative_mse_delta(110.0, 100.0) == pytest.approx(10.0)
    torch.testing.assert_close(relative_ne_delta(torch.tensor([0.8, 1.2], dtype=torch.float64), torch.tensor([1.0, 1.0])),
                               torch.tensor([-20.0, 20.0], dtype=torch.float64))
    assert relative_ne_delta({"a": 0.5, "b": 1.0}, {"a": 1.0, "b": 0.8}) == pytest.approx({"a": -50.0, "b": 25.0})
    with pytest.raises(ValueError, match="relative_ne_delta: the model has keys"):
        relative_ne_delta({"a": 1.0}, {"b": 1.0})
    assert math.isnan(relative_ne_delta(1.0, 0.0))


# ---------------------------------------------------------------------------------------------------------------
# MSE


def test_mse_masked_weighted_batches():
    *_, weights, pred, target, mask = _examples(97)
    keep = mask
    expected = float(((pred[keep].double() - target[keep].double()) ** 2 * weights[keep]).sum() / weights[keep].sum())
    assert mean_squared_error(pred, target, mask, weights).item() == pytest.approx(expected, rel=1e-12)
    pred_nan = pred.masked_fill(~mask, float("nan"))
    m = MeanSquaredError()
    for idx in torch.tensor_split(torch.arange(97), 4):
        m.update(pred_nan[idx], target[idx], mask[idx])
    assert m.compute()[0].item() == pytest.approx(float(((pred[keep].double() - target[keep].double()) ** 2).mean()), rel=1e-12)
    assert m.count[0] == keep.sum()
    assert torch.isnan(mean_squared_error(pred, target, torch.zeros(97, dtype=torch.bool)))


# ---------------------------------------------------------------------------------------------------------------
# AUC


def _pairwise_auc(scores, labels, weights=None):
    """O(n^2): Σ over (positive, negative) pairs of w⁺w⁻ · ([s⁺ > s⁻] + ½[s⁺ = s⁻]) / Σ w⁺w⁻."""
    w = torch.ones_like(scores, dtype=torch.float64) if weights is None else weights.double()
    pos, neg = labels > 0.5, labels < 0.5
    sp, sn = scores[pos].double(), scores[neg].double()
    wp, wn = w[pos], w[neg]
    pair_w = wp[:, None] * wn[None, :]
    win = (sp[:, None] > sn[None, :]).double() + 0.5 * (sp[:, None] == sn[None, :]).double()
    return (pair_w * win).sum() / pair_w.sum()


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_auc_matches_pairwise_count(ties, weighted):
    logits, labels, mask, weights, *_ = _examples(300, 3, ties=ties)
    got = auc(logits, labels, mask, weights if weighted else None)
    for k in range(3):
        keep = mask[:, k]
        expected = _pairwise_auc(logits[keep, k], labels[keep, k], weights[keep] if weighted else None)
        torch.testing.assert_close(got[k], expected, rtol=1e-12, atol=0)


def _tied_scores():
    logits, labels, *_ = _examples(500, 1, observed=1.0, ties=True)
    return logits[:, 0], labels[:, 0], torch.rand(500, dtype=torch.float64)


def test_auc_matches_torcheval():
    ev = pytest.importorskip("torcheval.metrics.functional")
    s, y, w = _tied_scores()
    assert auc(s, y).item() == pytest.approx(ev.binary_auroc(s, y).item(), rel=1e-12)
    assert auc(s, y, weights=w).item() == pytest.approx(ev.binary_auroc(s, y, weight=w).item(), rel=1e-12)


def test_auc_matches_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    s, y, _ = _tied_scores()
    # torchmetrics builds the ROC curve in float32
    assert auc(s, y).item() == pytest.approx(tm.binary_auroc(s, y.long(), thresholds=None).item(), abs=1e-6)


def test_auc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    s, y, w = _tied_scores()
    assert auc(s, y).item() == pytest.approx(metrics.roc_auc_score(y.numpy(), s.numpy()), rel=1e-12)
    assert auc(s, y, weights=w).item() == pytest.approx(
        metrics.roc_auc_score(y.numpy(), s.numpy(), sample_weight=w.numpy()), rel=1e-12)


def test_auc_hand_cases():
    assert auc(torch.tensor([0.1, 0.9]), torch.tensor([0.0, 1.0])).item() == 1.0
    assert auc(torch.tensor([0.9, 0.1]), torch.tensor([0.0, 1.0])).item() == 0.0
    assert auc(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.0, 1.0, 1.0])).item() == 0.5
    # 3 positives x 2 negatives: 0.4 beats 0.2 and ties 0.4 (1.5), 0.7 and 0.9 beat both (4): 5.5 of 6 pairs
    s = torch.tensor([0.2, 0.4, 0.4, 0.7, 0.9])
    y = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0])
    assert auc(s, y).item() == pytest.approx((1 + 0.5) / 6 + (2 + 2) / 6)
    # degenerate: one class only, nothing observed, a NaN score
    assert math.isnan(auc(torch.tensor([0.1, 0.2]), torch.tensor([1.0, 1.0])).item())
    assert math.isnan(auc(torch.tensor([0.1, 0.2]), torch.tensor([1.0, 0.0]), torch.tensor([False, False])).item())
    assert math.isnan(auc(torch.tensor([float("nan"), 0.2]), torch.tensor([1.0, 0.0])).item())
    with pytest.raises(ValueError, match="AUC.update: observed labels must be 0 or 1, got 0.5"):
        auc(torch.zeros(2), torch.tensor([0.5, 1.0]))


def test_auc_batches_merge_and_state_dict():
    logits, labels, mask, weights, *_ = _examples(211, ties=True, dtype=torch.float32)
    whole = AUC(T)
    whole.update(logits, labels, mask, weights)
    a, b = AUC(T), AUC(T)
    a.update(logits[:100], labels[:100], mask[:100])  # unweighted chunks count with weight 1
    a.update(logits[100:150], labels[100:150], mask[100:150], weights[100:150])
    b.update(logits[150:], labels[150:], mask[150:], weights[150:])
    c = AUC(T)
    buf = io.BytesIO()
    torch.save(a.merge(b).state_dict(), buf)
    buf.seek(0)
    c.load_state_dict(torch.load(buf))
    w_all = weights.clone()
    w_all[:100] = 1
    expected = auc(logits, labels, mask, w_all)
    torch.testing.assert_close(c.compute(), expected, rtol=1e-12, atol=0)
    assert torch.equal(c.count(), mask.sum(0).double())
    assert whole.state_dict()["scores.0"].dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------------
# hit rate


def test_hit_rate_hand_cases():
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.5], [0.3, 0.3, 0.3], [0.1, 0.7, 0.7]])
    target = torch.tensor([0, 2, 1, 2])
    # ranks (pessimistic): 1, 2, 3 (three-way tie), 2 (tie with candidate 1)
    torch.testing.assert_close(hit_rate_at_k(scores, target, [1, 2, 3]), torch.tensor([0.25, 0.75, 1.0], dtype=torch.float64))
    assert hit_rate_at_k(scores, target, 1).item() == 0.25
    assert hit_rate_at_k(scores, target, 10).item() == 1.0  # k >= C: every query hits
    # relevance matrix: a hit when any relevant candidate is in the top k; a row with none is left out
    rel = torch.tensor([[False, True, True], [True, False, False], [False, False, False], [False, True, True]])
    # row 0: best relevant 0.5 behind 0.9 -> rank 2; row 1: 0.2 behind both -> rank 3; row 3: 0.7 tie among relevant -> rank 1
    torch.testing.assert_close(hit_rate_at_k(scores, rel, [1, 2, 3]), torch.tensor([1 / 3, 2 / 3, 1.0], dtype=torch.float64))
    # NaN scores rank ahead of the target; a NaN target is a miss
    nan = float("nan")
    assert hit_rate_at_k(torch.tensor([[0.1, nan, 0.0]]), torch.tensor([0]), 1).item() == 0.0
    assert hit_rate_at_k(torch.tensor([[0.1, nan, 0.0]]), torch.tensor([0]), 2).item() == 1.0
    assert hit_rate_at_k(torch.tensor([[nan, 0.5]]), torch.tensor([0]), 2).item() == 0.0
    with pytest.raises(ValueError, match="hit_rate_at_k: target index 3 is out of range for 3 candidates"):
        hit_rate_at_k(scores, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="k must be a positive int"):
        hit_rate_at_k(scores, target, 0)


def _pessimistic_rank(row, t):
    """1-based rank of candidate t when ties put it after every equal-scoring candidate (sort, then scan)."""
    order = sorted(range(len(row)), key=lambda c: (-row[c], c == t))
    return order.index(t) + 1


def test_hit_rate_matches_brute_force_ranking():
    scores = torch.randint(0, 5, (200, 12)).double()  # many ties
    target = torch.randint(0, 12, (200,))
    ranks = torch.tensor([_pessimistic_rank(r, t) for r, t in zip(scores.tolist(), target.tolist())])
    ks = [1, 3, 10]
    expected = torch.tensor([(ranks <= k).double().mean().item() for k in ks], dtype=torch.float64)
    torch.testing.assert_close(hit_rate_at_k(scores, target, ks), expected, rtol=1e-12, atol=0)
    # the same targets as a one-hot relevance matrix
    onehot = torch.nn.functional.one_hot(target, 12).bool()
    torch.testing.assert_close(hit_rate_at_k(scores, onehot, ks), expected, rtol=1e-12, atol=0)
    m = HitRate(ks)
    for idx in torch.tensor_split(torch.arange(200), 3):
        m.update(scores[idx], target[idx])
    torch.testing.assert_close(m.compute(), expected, rtol=1e-12, atol=0)
    m2 = HitRate(ks)
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2.compute(), expected)


# ---------------------------------------------------------------------------------------------------------------
# MetricSet


def _update_all(m: MetricSet, data, splits):
    logits, labels, mask, weights, wp, wt, wm = data
    for idx in torch.tensor_split(torch.arange(logits.shape[0]), splits):
        m.update(logits[idx], labels[idx], mask[idx], wp[idx], wt[idx], wm[idx], weights=weights[idx])


def test_metric_set_compute_matches_the_parts():
    data = _examples(400)
    logits, labels, mask, weights, wp, wt, wm = data
    m = MetricSet()
    _update_all(m, data, [7, 130, 131])
    out = m.compute()
    assert list(out) == [*TASKS, "watch_time"]
    ne = normalized_entropy(logits, labels, mask, weights)
    aucs = auc(logits, labels, mask, weights)
    for k, task in enumerate(TASKS):
        r = out[task]
        assert set(r) == {"ne", "bce", "auc", "count", "weight", "pos_rate"}
        assert r["ne"] == pytest.approx(ne[k].item(), rel=1e-12)
        assert r["auc"] == pytest.approx(aucs[k].item(), rel=1e-12)
        assert r["count"] == int(mask[:, k].sum())
        keep = mask[:, k]
        assert r["pos_rate"] == pytest.approx(float((labels[keep, k] * weights[keep]).sum() / weights[keep].sum()), rel=1e-12)
    assert out["watch_time"]["mse"] == pytest.approx(mean_squared_error(wp, wt, wm, weights).item(), rel=1e-12)
    assert out["watch_time"]["count"] == int(wm.sum())
    # the same examples give relative deltas of 0; a uniformly worse model a positive NE delta on every task
    assert all(v == 0 for v in relative_deltas(out, out).values())
    worse = MetricSet(auc=False)
    _update_all(worse, (logits * 0.1, labels, mask, weights, wp * 2, wt, wm), 2)
    deltas = relative_deltas(worse.compute(), {t: out[t] for t in [*TASKS, "watch_time"]})
    assert all(deltas[t] > 0 for t in TASKS) and deltas["watch_time"] > 0


def test_eval_table_marks_undefined_metrics():
    # a log that never shows an action: that task's labels are all 0, NE is +inf and AUC NaN; the table prints "–"
    # and says why instead of "inf | nan | +nan"
    from dv365.train.evaluate import format_table

    logits, labels, mask, weights, wp, wt, wm = _examples(200)
    never = TASKS.index("profile_visit")
    labels = labels.clone()
    labels[:, never] = 0
    m, b = MetricSet(), MetricSet()
    _update_all(m, (logits, labels, mask, weights, wp, wt, wm), 3)
    _update_all(b, (logits * 0.5, labels, mask, weights, wp, wt, wm), 3)
    out, base = m.compute(), b.compute()
    assert out["profile_visit"]["ne"] == float("inf") and math.isnan(out["profile_visit"]["auc"])
    table = format_table(out, base, relative_deltas(out, base))
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    cells = [c.strip() for c in rows["profile_visit"].split("|")[1:-1]]
    assert cells[2:] == ["0.000", "–", "–", "–", "–", "–"]
    assert "inf" not in table and "nan" not in table
    assert "–: undefined: " in table and "no positive or no negative example" in table
    liked = [c.strip() for c in rows["liked"].split("|")[1:-1]]
    assert liked[3] == f"{out['liked']['ne']:.4f}" and liked[7] == f"{relative_deltas(out, base)['liked']:+.2f}"
    # a table with every metric defined has no note
    full = format_table({t: out[t] for t in TASKS if t != "profile_visit"})
    assert "–" not in full


def test_metric_set_checkpoint_resumes_eval():
    data = _examples(150)
    whole = MetricSet()
    _update_all(whole, data, 5)
    first, rest = tuple(t[:90] for t in data), tuple(t[90:] for t in data)
    a = MetricSet()
    _update_all(a, first, 3)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = MetricSet()
    b.load_state_dict(torch.load(buf))
    _update_all(b, rest, 2)
    expected, got = whole.compute(), b.compute()
    for task in expected:
        assert got[task] == pytest.approx(expected[task], rel=1e-12, nan_ok=True)
    with pytest.raises(ValueError, match="the state is for tasks"):
        MetricSet(tasks=TASKS[:3]).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="the state holds"):
        MetricSet(auc=False).load_state_dict(a.state_dict())


def test_metric_set_merge_and_single_process_sync():
    data = _examples(120)
    whole = MetricSet()
    _update_all(whole, data, 1)
    a, b = MetricSet(), MetricSet()
    _update_all(a, tuple(t[:50] for t in data), 2)
    _update_all(b, tuple(t[50:] for t in data), 2)
    a.merge(b).sync()  # without torch.distributed, sync changes nothing
    expected = whole.compute()
    got = a.compute()
    for task in expected:
        assert got[task] == pytest.approx(expected[task], rel=1e-12, nan_ok=True)
    with pytest.raises(RuntimeError, match="already synced"):
        a.sync()
    with pytest.raises(RuntimeError, match="call reset\\(\\) first"):
        _update_all(a, data, 1)
    a.reset()
    assert all(v["count"] == 0 for v in a.compute().values())


def test_metric_set_rejects_bad_calls():
    data = _examples(8)
    logits, labels, mask, weights, wp, wt, wm = data
    with pytest.raises(ValueError, match="watch_pred and watch_target are required"):
        MetricSet().update(logits, labels, mask)
    with pytest.raises(ValueError, match="watch_time=False but got watch_pred"):
        MetricSet(watch_time=False).update(logits, labels, mask, wp, wt, wm)
    with pytest.raises(ValueError, match=r"weights must be per example, shape \[B\]"):
        MetricSet().update(logits, labels, mask, wp, wt, wm, weights=torch.ones(8, T))
    with pytest.raises(ValueError, match="tasks must be distinct"):
        MetricSet(tasks=("a", "a"))
    m = MetricSet(watch_time=False, auc=False)
    m.update(logits, labels, mask)
    assert set(m.compute()["skip"]) == {"ne", "bce", "count", "weight", "pos_rate"}


# ---------------------------------------------------------------------------------------------------------------
# two real processes (gloo)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(1234)
        data = _examples(41)  # every rank builds the same data and takes its own uneven share
        cut = 13
        mine = tuple(t[:cut] if rank == 0 else t[cut:] for t in data)
        m = MetricSet()
        # rank 0 passes no weights in its first batch, so the ranks disagree on having weighted AUC chunks
        logits, labels, mask, weights, wp, wt, wm = mine
        ones = torch.ones(5, dtype=torch.float64) if rank else None
        m.update(logits[:5], labels[:5], mask[:5], wp[:5], wt[:5], wm[:5], weights=ones)
        m.update(logits[5:], labels[5:], mask[5:], wp[5:], wt[5:], wm[5:], weights=weights[5:])
        h = HitRate((1, 3))
        h.update(logits, torch.argmax(labels.nan_to_num(0.0), 1))
        m.sync()
        h.sync()
        empty = AUC(2).sync()  # no rank has a score: nothing to gather
        torch.save({"metrics": m.compute(), "hit_rate": h.compute(), "empty": empty.compute()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sync_over_two_gloo_processes(tmp_path):
    from gloo_helpers import run_gloo_processes

    run_gloo_processes(_worker, tmp_path, "the 2-process sync", timeout=60)
    # one process over all the examples, with the same batches and weights
    torch.manual_seed(1234)
    data = _examples(41)
    expected = MetricSet()
    h = HitRate((1, 3))
    for lo, hi in ((0, 13), (13, 41)):
        logits, labels, mask, weights, wp, wt, wm = (t[lo:hi] for t in data)
        w = weights.clone()
        w[:5] = 1.0
        expected.update(logits, labels, mask, wp, wt, wm, weights=w)
        h.update(logits, torch.argmax(labels.nan_to_num(0.0), 1))
    ref = expected.compute()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for task in ref:
            assert got["metrics"][task] == pytest.approx(ref[task], rel=1e-12, nan_ok=True)
        torch.testing.assert_close(got["hit_rate"], h.compute())
        assert torch.isnan(got["empty"]).all()
