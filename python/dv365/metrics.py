"""Offline evaluation metrics of DV365 (paper section 3): normalized entropy (eq. 12) and its relative delta,
watch-time MSE, AUC, and hit rate @k for retrieval.

Every metric keeps **running sums** (AUC keeps the scores themselves), never averages of per-batch averages, so
the result is exact however the examples are split into batches or across ranks::

    m = MetricSet()                        # the 9 binary tasks of dv365.data.TASKS + watch time
    for batch in loader:
        m.update(logits, labels, label_mask, watch_pred, watch_target, watch_mask)
    m.sync()                               # sums the state over torch.distributed ranks (no-op without)
    result = m.compute()                   # {"video_complete": {"ne": ..., "auc": ...}, ..., "watch_time": {...}}
    relative_deltas(result, baseline)      # paper table 3: per-task NE delta in %, negative = better

The same state can be combined by hand (``merge``), checkpointed (``state_dict`` / ``load_state_dict``) and
cleared (``reset``). ``sync`` adds the other ranks' state into this one, so it is called once, after the last
``update``; further ``update`` or ``sync`` calls raise until ``reset``. Each rank must pass its own examples
exactly once: an example that a distributed sampler repeats to even out the ranks is counted twice.

Labels come with a ``label_mask`` (True = observed): an unobserved label contributes nothing, whatever its
value (NaN included). Optional per-example ``weights`` (>= 0) weight every sum; weight 0 is the same as masked.

Degenerate tasks never raise; they give non-finite values that say what happened:

- no observed label (or only zero weights): NE, AUC, MSE, positive rate are NaN;
- every observed label equal (p = 0 or 1, so the entropy H(p) = 0): NE is +inf (NaN if the predictions are
  perfect, 0 / 0), and AUC is NaN (no positive-negative pair). TorchRec clamps p to [1e-12, 1 - 1e-12] and
  reports a large finite NE instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .data.schema import TASKS

__all__ = [
    "AUC",
    "HitRate",
    "MeanSquaredError",
    "MetricSet",
    "NormalizedEntropy",
    "auc",
    "hit_rate_at_k",
    "mean_squared_error",
    "normalized_entropy",
    "relative_deltas",
    "relative_mse_delta",
    "relative_ne_delta",
]

_F64 = torch.float64


# ----------------------------------------------------------------------------------------------------------------
# input checks


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _as_2d(where: str, name: str, x: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """``[B]`` (one task) or ``[B, T]``, returned as ``[B, T]``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 1 and num_tasks == 1:
        return x.unsqueeze(1)
    if x.dim() != 2 or x.shape[1] != num_tasks:
        expected = f"[B, {num_tasks}]" + (" or [B]" if num_tasks == 1 else "")
        raise ValueError(f"{where}: {name} must have shape {expected}, got {_shape(x)}")
    return x


def _observed(where: str, name: str, mask: torch.Tensor | None, like: torch.Tensor, num_tasks: int) -> torch.Tensor:
    if mask is None:
        return torch.ones(like.shape, dtype=torch.bool, device=like.device)
    mask = _as_2d(where, name, mask, num_tasks)
    if mask.dtype != torch.bool:
        raise ValueError(f"{where}: {name} must be a bool tensor (True = observed), got {mask.dtype}")
    if mask.shape != like.shape:
        raise ValueError(f"{where}: {name} must have the shape of the predictions {_shape(like)}, got {_shape(mask)}")
    return mask.to(like.device)


def _weights(where: str, weights: torch.Tensor | None, like: torch.Tensor, check: bool) -> torch.Tensor | None:
    """Per-example ``[B]`` or per-label ``[B, T]`` weights as float64 ``[B, T]`` (None: all ones)."""
    if weights is None:
        return None
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"{where}: weights must be a torch.Tensor, got {type(weights).__name__}")
    b, t = like.shape
    if weights.shape == (b,):
        weights = weights.unsqueeze(1).expand(b, t)
    elif weights.shape != (b, t):
        raise ValueError(f"{where}: weights must have shape [{b}] or [{b}, {t}], got {_shape(weights)}")
    weights = weights.detach().to(device=like.device, dtype=_F64)
    if check and weights.numel() and not bool(((weights >= 0) & torch.isfinite(weights)).all()):
        raise ValueError(f"{where}: weights must be finite and >= 0, got min {weights.min().item()}")
    return weights


def _labels(where: str, labels: torch.Tensor, like: torch.Tensor, num_tasks: int) -> torch.Tensor:
    labels = _as_2d(where, "labels", labels, num_tasks)
    if labels.shape != like.shape:
        raise ValueError(f"{where}: labels must have the shape of the predictions {_shape(like)}, got {_shape(labels)}")
    return labels.detach().to(device=like.device, dtype=_F64)


# ----------------------------------------------------------------------------------------------------------------
# torch.distributed helpers


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _comm_device(group, fallback: torch.device) -> torch.device:
    """NCCL moves only CUDA tensors; gloo (and the mixed ``cpu:gloo,cuda:nccl`` default) takes CPU ones."""
    backend = str(dist.get_backend(group))
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if fallback.type == "cuda" and "nccl" in backend:
        return fallback
    return torch.device("cpu")


def _all_reduce_sum(tensors: list[torch.Tensor], group) -> list[torch.Tensor]:
    """One all-reduce of the concatenated float64 state; returns new tensors on the inputs' device."""
    device = tensors[0].device
    flat = torch.cat([t.reshape(-1) for t in tensors]).to(_comm_device(group, device))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].reshape(t.shape).to(device))
        start += t.numel()
    return out


def _all_gather_1d(t: torch.Tensor, group) -> list[torch.Tensor]:
    """Every rank's 1-D tensor (of any length), in rank order; all ranks pass the same dtype."""
    device = _comm_device(group, t.device)
    world = dist.get_world_size(group)
    n = torch.tensor([t.numel()], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    counts = [int(s.item()) for s in sizes]
    if max(counts) == 0:
        return [t[:0] for _ in counts]
    padded = torch.zeros(max(counts), dtype=t.dtype, device=device)
    padded[: t.numel()] = t.to(device)
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded, group=group)
    return [o[:c].to(t.device) for o, c in zip(out, counts)]


# ----------------------------------------------------------------------------------------------------------------
# running-sum metrics


class _RunningSums:
    """float64 ``[num_tasks]`` sums (named by ``_FIELDS``) that add across batches, instances and ranks."""

    _FIELDS: tuple[str, ...] = ()

    def __init__(self, num_tasks: int = 1, *, device: torch.device | str = "cpu", check_inputs: bool = True) -> None:
        if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
            raise ValueError(f"{type(self).__name__}: num_tasks must be a positive int, got {num_tasks!r}")
        self.num_tasks = num_tasks
        # the bound checks read values back from the device (one synchronization per update); off, bad labels or
        # weights give wrong numbers instead of an error
        self.check_inputs = check_inputs
        self._device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        for f in self._FIELDS:
            setattr(self, f, torch.zeros(self.num_tasks, dtype=_F64, device=self._device))
        self._synced = False

    def _where(self, method: str) -> str:
        return f"dv365.metrics.{type(self).__name__}.{method}"

    def _start_update(self, device: torch.device) -> None:
        if self._synced:
            raise RuntimeError(
                f"{self._where('update')}: the state was already summed over ranks by sync(); call reset() first"
            )
        if self._device != device:  # the state follows the inputs, so no update copies to another device
            self._device = device
            for f in self._FIELDS:
                setattr(self, f, getattr(self, f).to(device))

    def _add(self, **sums: torch.Tensor) -> None:
        for f, v in sums.items():
            getattr(self, f).add_(v)

    def merge(self, other: _RunningSums) -> _RunningSums:
        """Add ``other``'s state (the same metric over other examples) into this one; returns self."""
        if type(other) is not type(self) or other.num_tasks != self.num_tasks:
            raise ValueError(
                f"{self._where('merge')}: expected a {type(self).__name__} with {self.num_tasks} tasks, "
                f"got {type(other).__name__} with {getattr(other, 'num_tasks', None)}"
            )
        for f in self._FIELDS:
            getattr(self, f).add_(getattr(other, f).to(self._device))
        return self

    def sync(self, group=None) -> _RunningSums:
        """Sum the state over the ranks of ``group`` (all-reduce) when torch.distributed is initialized; after it
        every rank holds the global state. Call once, after the last update."""
        if self._synced:
            raise RuntimeError(f"{self._where('sync')}: already synced; a second sum would count every rank twice")
        if _distributed():
            for f, v in zip(self._FIELDS, _all_reduce_sum([getattr(self, f) for f in self._FIELDS], group)):
                setattr(self, f, v)
        self._synced = True
        return self

    def state_dict(self) -> dict:
        state = {f: getattr(self, f).detach().cpu().clone() for f in self._FIELDS}
        return {"metric": type(self).__name__, "num_tasks": self.num_tasks, "synced": self._synced, **state}

    def load_state_dict(self, state: Mapping) -> None:
        where = self._where("load_state_dict")
        if state.get("metric") != type(self).__name__ or state.get("num_tasks") != self.num_tasks:
            raise ValueError(
                f"{where}: the state is of {state.get('metric')!r} with {state.get('num_tasks')} tasks, "
                f"expected {type(self).__name__!r} with {self.num_tasks}"
            )
        missing = [f for f in self._FIELDS if f not in state]
        if missing:
            raise ValueError(f"{where}: the state lacks {missing}")
        for f in self._FIELDS:
            v = torch.as_tensor(state[f], dtype=_F64)
            if v.shape != (self.num_tasks,):
                raise ValueError(f"{where}: {f} must have shape ({self.num_tasks},), got {_shape(v)}")
            setattr(self, f, v.to(self._device).clone())
        self._synced = bool(state.get("synced", False))


class NormalizedEntropy(_RunningSums):
    """Normalized entropy per task (paper eq. 12; He et al. 2014)::

        NE_k = BCE_k / H(p_k),   BCE_k = Σ w·bce(logit, y) / Σ w,   p_k = Σ w·y / Σ w,
        H(p) = -[p ln p + (1 - p) ln(1 - p)]

    over the observed labels of task k. NE < 1 beats the constant predictor of the base rate, which has NE = 1.
    From the running sums Σ w·bce, Σ w·y, Σ w (float64) and the count of observed labels, like TorchRec's
    ``NEMetric``. Inputs are logits (the BCE is computed from them directly, so very confident predictions do
    not saturate); labels are in [0, 1] (soft labels allowed). NaN for a task with no observed label, +inf
    when all its observed labels are equal (see the module docstring).
    """

    _FIELDS = ("bce_sum", "weight_sum", "positive_sum", "count")

    def update(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        label_mask: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> None:
        """``logits``, ``labels``, ``label_mask`` ``[B, T]`` (or ``[B]`` for one task); ``weights`` ``[B]`` or ``[B, T]``."""
        where = self._where("update")
        x = _as_2d(where, "logits", logits, self.num_tasks)
        self._start_update(x.device)
        y = _labels(where, labels, x, self.num_tasks)
        observed = _observed(where, "label_mask", label_mask, x, self.num_tasks)
        w = _weights(where, weights, x, self.check_inputs)
        y = torch.where(observed, y, 0.0)  # unobserved labels may hold anything, NaN included
        if self.check_inputs and y.numel() and not bool(((y >= 0) & (y <= 1)).all()):
            bad = y[~((y >= 0) & (y <= 1))][0].item()
            raise ValueError(f"{where}: observed labels must lie in [0, 1], got {bad}")
        x = torch.where(observed, x.detach().to(_F64), 0.0)
        bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        w = observed.to(_F64) if w is None else torch.where(observed, w, 0.0)
        self._add(bce_sum=(w * bce).sum(0), weight_sum=w.sum(0), positive_sum=(w * y).sum(0), count=observed.sum(0))

    def mean_bce(self) -> torch.Tensor:
        """Weighted mean BCE (log loss, nats) per task, ``[T]``."""
        return self.bce_sum / self.weight_sum

    def positive_rate(self) -> torch.Tensor:
        """The weighted mean label p_k per task, ``[T]``."""
        return self.positive_sum / self.weight_sum

    def compute(self) -> torch.Tensor:
        """NE per task, float64 ``[T]``."""
        p = self.positive_rate()
        # abs: at p = 0 or 1 the sum is -0.0, which would turn +inf into -inf
        entropy = (torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)).abs()
        return self.mean_bce() / entropy


class MeanSquaredError(_RunningSums):
    """Weighted mean squared error per task from the running sums Σ w·(pred - target)², Σ w (float64) and the
    count; used for watch time (the backbone's regression head, paper 2.3.1). NaN with no observed target."""

    _FIELDS = ("squared_error_sum", "weight_sum", "count")

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> None:
        """``pred``, ``target``, ``mask`` ``[B, T]`` (or ``[B]`` for one task); ``weights`` ``[B]`` or ``[B, T]``."""
        where = self._where("update")
        x = _as_2d(where, "pred", pred, self.num_tasks)
        self._start_update(x.device)
        t = _as_2d(where, "target", target, self.num_tasks)
        if t.shape != x.shape:
            raise ValueError(f"{where}: target must have the shape of pred {_shape(x)}, got {_shape(t)}")
        observed = _observed(where, "mask", mask, x, self.num_tasks)
        w = _weights(where, weights, x, self.check_inputs)
        err = torch.where(observed, x.detach().to(_F64) - t.detach().to(device=x.device, dtype=_F64), 0.0)
        w = observed.to(_F64) if w is None else torch.where(observed, w, 0.0)
        self._add(squared_error_sum=(w * err * err).sum(0), weight_sum=w.sum(0), count=observed.sum(0))

    def compute(self) -> torch.Tensor:
        """MSE per task, float64 ``[T]``."""
        return self.squared_error_sum / self.weight_sum


# ----------------------------------------------------------------------------------------------------------------
# AUC


def _binary_auc(scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Area under the ROC curve with ties counted as half (the trapezoid rule, as sklearn's roc_auc_score):
    Σ over groups of equal score of W⁺_g · (W⁻ below g + W⁻_g / 2), divided by W⁺ · W⁻. O(n log n)."""
    nan = torch.tensor(float("nan"), dtype=_F64, device=scores.device)
    if scores.numel() == 0 or bool(torch.isnan(scores).any()):
        return nan
    scores, order = torch.sort(scores)
    labels = labels[order]
    w = torch.ones(scores.shape, dtype=_F64, device=scores.device) if weights is None else weights[order].to(_F64)
    _, group = torch.unique_consecutive(scores, return_inverse=True)
    groups = int(group[-1].item()) + 1
    pos = torch.zeros(groups, dtype=_F64, device=scores.device).index_add_(0, group, torch.where(labels, w, 0.0))
    neg = torch.zeros(groups, dtype=_F64, device=scores.device).index_add_(0, group, torch.where(labels, 0.0, w))
    neg_below = torch.cumsum(neg, 0) - neg
    pairs = pos.sum() * neg.sum()
    if pairs.item() == 0:
        return nan
    return (pos * (neg_below + 0.5 * neg)).sum() / pairs


class AUC:
    """ROC AUC per task over every observed label, exact (paper section 3 reports NE; AUC is the usual
    companion). Ties count half, as in sklearn's ``roc_auc_score``; optional weights weight each pair by
    w_pos · w_neg. NaN for a task without both a positive and a negative, or with a NaN score.

    Memory: the scores are kept, not summed. Per observed label: the score (4 bytes for float32/16-bit inputs,
    8 for float64) and the label (1 byte), plus the weight (4 or 8 bytes) when weights are given. An eval set
    of 1M examples × 9 tasks, all observed, float32, unweighted: 45 MB. Fine for evaluation; for a metric
    over every training step, use :class:`NormalizedEntropy`. ``sync`` gathers every rank's scores (each rank
    then holds them all).
    """

    def __init__(self, num_tasks: int = 1, *, check_inputs: bool = True) -> None:
        if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
            raise ValueError(f"AUC: num_tasks must be a positive int, got {num_tasks!r}")
        self.num_tasks = num_tasks
        self.check_inputs = check_inputs
        self.reset()

    def reset(self) -> None:
        # per task: chunks of (scores, bool labels, weights or None)
        self._chunks: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]] = [
            [] for _ in range(self.num_tasks)
        ]
        self._synced = False

    def _where(self, method: str) -> str:
        return f"dv365.metrics.AUC.{method}"

    def update(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        label_mask: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> None:
        """``scores`` (logits or probabilities: only their order matters), ``labels`` (0 / 1), ``label_mask``
        ``[B, T]`` (or ``[B]`` for one task); ``weights`` ``[B]`` or ``[B, T]``."""
        where = self._where("update")
        if self._synced:
            raise RuntimeError(f"{where}: the state was already gathered over ranks by sync(); call reset() first")
        s = _as_2d(where, "scores", scores, self.num_tasks).detach()
        y = _labels(where, labels, s, self.num_tasks)
        observed = _observed(where, "label_mask", label_mask, s, self.num_tasks)
        w = _weights(where, weights, s, self.check_inputs)
        if self.check_inputs:
            y_obs = y[observed]
            bad = y_obs[(y_obs != 0) & (y_obs != 1)]
            if bad.numel():
                raise ValueError(f"{where}: observed labels must be 0 or 1, got {bad[0].item()}")
        # promoting to at least float32 keeps the order of 16-bit scores exactly
        s = s.to(torch.promote_types(s.dtype, torch.float32))
        wdtype = s.dtype
        for k in range(self.num_tasks):
            keep = observed[:, k]
            self._chunks[k].append(
                (s[keep, k].clone(), y[keep, k] > 0.5, None if w is None else w[keep, k].to(wdtype))
            )

    def _task(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Task k's scores, labels and weights (None when no chunk is weighted), concatenated."""
        chunks = self._chunks[k]
        if not chunks:
            return torch.empty(0, dtype=torch.float32), torch.empty(0, dtype=torch.bool), None
        dtype = torch.float64 if any(c[0].dtype == torch.float64 for c in chunks) else torch.float32
        scores = torch.cat([c[0].to(dtype) for c in chunks])
        labels = torch.cat([c[1] for c in chunks])
        weights = None
        if any(c[2] is not None for c in chunks):
            weights = torch.cat([torch.ones_like(c[0], dtype=dtype) if c[2] is None else c[2].to(dtype) for c in chunks])
        if len(chunks) > 1:  # keep one chunk, so compute and state_dict concatenate once
            self._chunks[k] = [(scores, labels, weights)]
        return scores, labels, weights

    def count(self) -> torch.Tensor:
        """Observed labels per task, ``[T]``."""
        return torch.tensor([sum(c[0].numel() for c in chunks) for chunks in self._chunks], dtype=_F64)

    def compute(self) -> torch.Tensor:
        """AUC per task, float64 ``[T]`` (on the CPU)."""
        return torch.stack([_binary_auc(*self._task(k)).cpu() for k in range(self.num_tasks)])

    def merge(self, other: AUC) -> AUC:
        """Append ``other``'s kept scores (the same tasks over other examples); returns self."""
        if not isinstance(other, AUC) or other.num_tasks != self.num_tasks:
            raise ValueError(
                f"{self._where('merge')}: expected an AUC with {self.num_tasks} tasks, got "
                f"{type(other).__name__} with {getattr(other, 'num_tasks', None)}"
            )
        for k in range(self.num_tasks):
            self._chunks[k].extend(other._chunks[k])
        return self

    def sync(self, group=None) -> AUC:
        """Gather every rank's scores (all-gather) when torch.distributed is initialized; after it every rank
        holds all of them. Call once, after the last update."""
        if self._synced:
            raise RuntimeError(f"{self._where('sync')}: already synced; a second gather would count every rank twice")
        if _distributed():
            tasks = [self._task(k) for k in range(self.num_tasks)]
            device = tasks[0][0].device
            # ranks agree on the score dtype and on whether anyone has weights before gathering the data
            flags = torch.tensor(
                [float(any(t[0].dtype == torch.float64 for t in tasks)), float(any(t[2] is not None for t in tasks))]
            )
            flags = _all_reduce_sum([flags.to(_F64)], group)[0]
            dtype = torch.float64 if flags[0] > 0 else torch.float32
            weighted = bool(flags[1] > 0)
            counts = torch.tensor([t[0].numel() for t in tasks], dtype=torch.int64)
            scores = torch.cat([t[0].to(device=device, dtype=dtype) for t in tasks])
            labels = torch.cat([t[1].to(device) for t in tasks]).to(torch.uint8)  # gloo has no bool
            all_counts = _all_gather_1d(counts, group)
            all_scores = _all_gather_1d(scores, group)
            all_labels = _all_gather_1d(labels, group)
            if weighted:
                weights = torch.cat(
                    [(torch.ones(t[0].shape, dtype=dtype) if t[2] is None else t[2].to(dtype)).to(device) for t in tasks]
                )
                all_weights = _all_gather_1d(weights, group)
            self.reset()
            for r, c in enumerate(all_counts):
                splits = c.tolist()
                for k, (s, y) in enumerate(zip(all_scores[r].split(splits), all_labels[r].split(splits))):
                    w = all_weights[r].split(splits)[k] if weighted else None
                    self._chunks[k].append((s, y.bool(), w))
            for k in range(self.num_tasks):
                self._task(k)
        self._synced = True
        return self

    def state_dict(self) -> dict:
        state: dict = {"metric": "AUC", "num_tasks": self.num_tasks, "synced": self._synced}
        for k in range(self.num_tasks):
            s, y, w = self._task(k)
            state[f"scores.{k}"] = s.cpu().clone()
            state[f"labels.{k}"] = y.cpu().clone()
            state[f"weights.{k}"] = None if w is None else w.cpu().clone()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        where = self._where("load_state_dict")
        if state.get("metric") != "AUC" or state.get("num_tasks") != self.num_tasks:
            raise ValueError(
                f"{where}: the state is of {state.get('metric')!r} with {state.get('num_tasks')} tasks, "
                f"expected 'AUC' with {self.num_tasks}"
            )
        self.reset()
        for k in range(self.num_tasks):
            try:
                s, y, w = state[f"scores.{k}"], state[f"labels.{k}"], state[f"weights.{k}"]
            except KeyError as e:
                raise ValueError(f"{where}: the state lacks {e.args[0]!r}") from None
            if s.dim() != 1 or y.shape != s.shape or y.dtype != torch.bool or (w is not None and w.shape != s.shape):
                raise ValueError(f"{where}: task {k}'s scores, labels (bool) and weights must be 1-D of one length")
            self._chunks[k].append((s.clone(), y.clone(), None if w is None else w.clone()))
        self._synced = bool(state.get("synced", False))


# ----------------------------------------------------------------------------------------------------------------
# hit rate @k


def _hits(where: str, scores: torch.Tensor, target: torch.Tensor, ks: Sequence[int]) -> tuple[torch.Tensor, int]:
    """Hits per k ``[len(ks)]`` (float64) and the number of queries that count."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        got = _shape(scores) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"{where}: scores must be a [n, C] tensor, got {got}")
    n, c = scores.shape
    scores = scores.detach()
    if target.dtype == torch.bool:
        if target.shape != scores.shape:
            raise ValueError(f"{where}: a bool relevance target must have the shape of scores {(n, c)}, got {_shape(target)}")
        relevant = target.to(scores.device)
        has = relevant.any(1)
        best = scores.masked_fill(~relevant, float("-inf")).amax(1, keepdim=True) if c else scores.new_zeros(n, 1)
        # NaN scores rank ahead of the target; a NaN relevant score makes the row a miss
        nan_relevant = (torch.isnan(scores) & relevant).any(1)
        ahead = (((scores >= best) | torch.isnan(scores)) & ~relevant).sum(1)
        ok = has & ~nan_relevant
        queries = int(has.sum().item())
    else:
        if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ValueError(
                f"{where}: target must hold integer indices [n] or a bool relevance matrix [n, C], got {target.dtype}"
            )
        if target.shape != (n,):
            raise ValueError(f"{where}: target indices must have shape ({n},), got {_shape(target)}")
        target = target.to(device=scores.device, dtype=torch.int64)
        if n and (target.min().item() < 0 or target.max().item() >= c):
            bad = target[(target < 0) | (target >= c)][0].item()
            raise ValueError(f"{where}: target index {bad} is out of range for {c} candidates")
        own = scores.gather(1, target.unsqueeze(1))
        # every other candidate scoring at least the target's is ranked ahead of it (pessimistic ties)
        ahead = ((scores >= own) | torch.isnan(scores)).sum(1) - 1
        ok = ~torch.isnan(own.squeeze(1))
        queries = n
    hits = torch.stack([((ahead < k) & ok).sum() for k in ks]).to(_F64)
    return hits, queries


def _check_ks(where: str, ks) -> tuple[int, ...]:
    ks = (ks,) if isinstance(ks, int) else tuple(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"{where}: k must be a positive int or a non-empty sequence of them, got {ks!r}")
    return ks


class HitRate:
    """Hit rate @k for retrieval (paper section 3, table 4): the fraction of queries whose target is among the
    k highest-scoring candidates, for several k at once, from running counts.

    The target is an index ``[n]`` into the candidates or a bool relevance matrix ``[n, C]`` (a hit when any
    relevant candidate is in the top k; queries with no relevant candidate are left out). Ties are broken
    **pessimistically**: every other candidate scoring at least as high as the target ranks ahead of it, so a
    constant scorer has hit rate 0 for k < C rather than a lucky value. NaN scores rank ahead of the target; a
    NaN target score is a miss. With k >= C every query is a hit.
    """

    def __init__(self, ks: int | Sequence[int] = (1, 10)) -> None:
        self.ks = _check_ks("HitRate", ks)
        self.reset()

    def reset(self) -> None:
        self.hits = torch.zeros(len(self.ks), dtype=_F64)
        self.count = torch.zeros((), dtype=_F64)
        self._synced = False

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        where = "dv365.metrics.HitRate.update"
        if self._synced:
            raise RuntimeError(f"{where}: the state was already summed over ranks by sync(); call reset() first")
        hits, queries = _hits(where, scores, target, self.ks)
        self.hits += hits.cpu()
        self.count += queries

    def compute(self) -> torch.Tensor:
        """Hit rate per k, float64 ``[len(ks)]``; NaN before any query."""
        return self.hits / self.count

    def merge(self, other: HitRate) -> HitRate:
        if not isinstance(other, HitRate) or other.ks != self.ks:
            raise ValueError(
                f"dv365.metrics.HitRate.merge: expected a HitRate with ks {self.ks}, got {getattr(other, 'ks', other)!r}"
            )
        self.hits += other.hits
        self.count += other.count
        return self

    def sync(self, group=None) -> HitRate:
        if self._synced:
            raise RuntimeError("dv365.metrics.HitRate.sync: already synced; a second sum would count every rank twice")
        if _distributed():
            self.hits, count = _all_reduce_sum([self.hits, self.count.reshape(1)], group)
            self.count = count.reshape(())
        self._synced = True
        return self

    def state_dict(self) -> dict:
        return {
            "metric": "HitRate", "ks": list(self.ks), "hits": self.hits.clone(), "count": self.count.clone(),
            "synced": self._synced,
        }

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("metric") != "HitRate" or tuple(state.get("ks", ())) != self.ks:
            raise ValueError(
                f"dv365.metrics.HitRate.load_state_dict: the state is of {state.get('metric')!r} with ks "
                f"{state.get('ks')}, expected 'HitRate' with ks {list(self.ks)}"
            )
        self.hits = torch.as_tensor(state["hits"], dtype=_F64).clone()
        self.count = torch.as_tensor(state["count"], dtype=_F64).clone()
        self._synced = bool(state.get("synced", False))


# ----------------------------------------------------------------------------------------------------------------
# functional forms


def normalized_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """NE (paper eq. 12) of one set of examples: a 0-d tensor for ``[B]`` inputs, ``[T]`` for ``[B, T]``."""
    tasks = 1 if logits.dim() == 1 else logits.shape[-1]
    m = NormalizedEntropy(tasks, device=logits.device)
    m.update(logits, labels, label_mask, weights)
    out = m.compute()
    return out[0] if logits.dim() == 1 else out


def mean_squared_error(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted, masked MSE: a 0-d tensor for ``[B]`` inputs, ``[T]`` for ``[B, T]``."""
    tasks = 1 if pred.dim() == 1 else pred.shape[-1]
    m = MeanSquaredError(tasks, device=pred.device)
    m.update(pred, target, mask, weights)
    out = m.compute()
    return out[0] if pred.dim() == 1 else out


def auc(
    scores: torch.Tensor,
    labels: torch.Tensor,
    label_mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """ROC AUC (ties count half): a 0-d tensor for ``[B]`` inputs, ``[T]`` for ``[B, T]``."""
    tasks = 1 if scores.dim() == 1 else scores.shape[-1]
    m = AUC(tasks)
    m.update(scores, labels, label_mask, weights)
    out = m.compute()
    return out[0] if scores.dim() == 1 else out


def hit_rate_at_k(scores: torch.Tensor, target: torch.Tensor, k: int | Sequence[int] = 1) -> torch.Tensor:
    """Hit rate @k of ``scores`` ``[n, C]`` against target indices ``[n]`` or a bool relevance matrix
    ``[n, C]``, ties broken pessimistically (see :class:`HitRate`): a 0-d tensor for an int ``k``, ``[len(k)]``
    for a sequence."""
    where = "dv365.metrics.hit_rate_at_k"
    ks = _check_ks(where, k)
    hits, queries = _hits(where, scores, target, ks)
    rate = hits.cpu() / queries if queries else torch.full((len(ks),), float("nan"), dtype=_F64)
    return rate[0] if isinstance(k, int) else rate


def _relative_delta(where: str, value, baseline):
    if isinstance(value, Mapping) or isinstance(baseline, Mapping):
        if not (isinstance(value, Mapping) and isinstance(baseline, Mapping)):
            raise TypeError(
                f"{where}: pass two mappings or two numbers/tensors, got {type(value).__name__} and {type(baseline).__name__}"
            )
        if value.keys() != baseline.keys():
            raise ValueError(f"{where}: the model has keys {sorted(value)} but the baseline {sorted(baseline)}")
        return {key: _relative_delta(where, value[key], baseline[key]) for key in value}
    if isinstance(value, torch.Tensor) or isinstance(baseline, torch.Tensor):
        value = torch.as_tensor(value, dtype=_F64)
        return 100.0 * (value - baseline) / torch.as_tensor(baseline, dtype=_F64, device=value.device)
    return 100.0 * (value - baseline) / baseline if baseline != 0 else float("nan")


def relative_ne_delta(ne_model, ne_baseline):
    """Relative NE delta in percent, ``100 · (NE_model - NE_baseline) / NE_baseline`` (paper section 3,
    table 3): negative = the model is better. Numbers, tensors (per task, elementwise) or mappings of them
    with the same keys. Meaningful only when both were computed on exactly the same examples."""
    return _relative_delta("dv365.metrics.relative_ne_delta", ne_model, ne_baseline)


def relative_mse_delta(mse_model, mse_baseline):
    """Relative MSE delta in percent, ``100 · (MSE_model - MSE_baseline) / MSE_baseline`` (table 3's
    watch_time row): negative = better. Same inputs as :func:`relative_ne_delta`."""
    return _relative_delta("dv365.metrics.relative_mse_delta", mse_model, mse_baseline)


# ----------------------------------------------------------------------------------------------------------------
# the backbone's task set


class MetricSet:
    """The metrics of the backbone's tasks (paper 2.3.1, section 3): NE, AUC, counts and positive rate of each
    binary task (``tasks``, by default the 9 of ``dv365.data.TASKS``, label-column order) and MSE of the watch
    time. One ``update`` per batch; ``compute`` returns plain floats::

        {"video_complete": {"ne", "bce", "auc", "count", "weight", "pos_rate"}, ..., "watch_time": {"mse", "count", "weight"}}

    ``auc=False`` keeps only running sums (no per-example memory, see :class:`AUC`); ``watch_time=False``
    drops the regression task. ``check_inputs=False`` skips the label / weight bound checks, which read values
    back from the device once per update.
    """

    def __init__(
        self,
        tasks: Sequence[str] = TASKS,
        *,
        auc: bool = True,
        watch_time: bool = True,
        check_inputs: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        self.tasks = tuple(tasks)
        if not self.tasks or len(set(self.tasks)) != len(self.tasks) or "watch_time" in self.tasks:
            raise ValueError(f"MetricSet: tasks must be distinct names other than 'watch_time', got {self.tasks}")
        self.ne = NormalizedEntropy(len(self.tasks), device=device, check_inputs=check_inputs)
        self.auc = AUC(len(self.tasks), check_inputs=check_inputs) if auc else None
        self.watch_time = MeanSquaredError(1, device=device, check_inputs=check_inputs) if watch_time else None

    def _parts(self) -> dict:
        return {name: m for name, m in (("ne", self.ne), ("auc", self.auc), ("watch_time", self.watch_time)) if m is not None}

    def reset(self) -> None:
        for m in self._parts().values():
            m.reset()

    def update(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        label_mask: torch.Tensor | None = None,
        watch_pred: torch.Tensor | None = None,
        watch_target: torch.Tensor | None = None,
        watch_mask: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> None:
        """``logits``, ``labels``, ``label_mask`` ``[B, T]``; ``watch_pred``, ``watch_target``, ``watch_mask``
        ``[B]`` (required unless built with ``watch_time=False``); ``weights`` ``[B]`` weights each example
        in every task."""
        where = "dv365.metrics.MetricSet.update"
        if weights is not None and weights.dim() != 1:
            raise ValueError(f"{where}: weights must be per example, shape [B], got {_shape(weights)}")
        if self.watch_time is not None:
            if watch_pred is None or watch_target is None:
                raise ValueError(f"{where}: watch_pred and watch_target are required (or build with watch_time=False)")
            if watch_pred.dim() != 1 or watch_pred.shape[0] != logits.shape[0]:
                raise ValueError(f"{where}: watch_pred must have shape [{logits.shape[0]}], got {_shape(watch_pred)}")
        elif watch_pred is not None or watch_target is not None:
            raise ValueError(f"{where}: this MetricSet was built with watch_time=False but got watch_pred/watch_target")
        self.ne.update(logits, labels, label_mask, weights)
        if self.auc is not None:
            self.auc.update(logits, labels, label_mask, weights)
        if self.watch_time is not None:
            self.watch_time.update(watch_pred, watch_target, watch_mask, weights)

    def compute(self) -> dict[str, dict[str, float]]:
        ne, bce, rate = self.ne.compute(), self.ne.mean_bce(), self.ne.positive_rate()
        aucs = self.auc.compute() if self.auc is not None else None
        out: dict[str, dict[str, float]] = {}
        for k, task in enumerate(self.tasks):
            out[task] = {
                "ne": ne[k].item(),
                "bce": bce[k].item(),
                **({"auc": aucs[k].item()} if aucs is not None else {}),
                "count": int(self.ne.count[k].item()),
                "weight": self.ne.weight_sum[k].item(),
                "pos_rate": rate[k].item(),
            }
        if self.watch_time is not None:
            out["watch_time"] = {
                "mse": self.watch_time.compute()[0].item(),
                "count": int(self.watch_time.count[0].item()),
                "weight": self.watch_time.weight_sum[0].item(),
            }
        return out

    def merge(self, other: MetricSet) -> MetricSet:
        if not isinstance(other, MetricSet) or other.tasks != self.tasks or other._parts().keys() != self._parts().keys():
            raise ValueError("dv365.metrics.MetricSet.merge: the other MetricSet must have the same tasks and parts")
        for name, m in self._parts().items():
            m.merge(other._parts()[name])
        return self

    def sync(self, group=None) -> MetricSet:
        """Sum (NE, MSE) and gather (AUC) the state over the ranks of ``group``; call once, after the last update."""
        for m in self._parts().values():
            m.sync(group)
        return self

    def state_dict(self) -> dict:
        return {"tasks": list(self.tasks), **{name: m.state_dict() for name, m in self._parts().items()}}

    def load_state_dict(self, state: Mapping) -> None:
        where = "dv365.metrics.MetricSet.load_state_dict"
        if tuple(state.get("tasks", ())) != self.tasks:
            raise ValueError(f"{where}: the state is for tasks {state.get('tasks')}, this MetricSet has {list(self.tasks)}")
        parts = self._parts()
        if set(state) - {"tasks"} != set(parts):
            raise ValueError(f"{where}: the state holds {sorted(set(state) - {'tasks'})}, this MetricSet {sorted(parts)}")
        for name, m in parts.items():
            m.load_state_dict(state[name])


def relative_deltas(result: Mapping, baseline: Mapping) -> dict[str, float]:
    """Paper table 3 from two :meth:`MetricSet.compute` results on the same examples: the relative NE delta
    (%) of each binary task and the relative MSE delta (%) of watch time; negative = the model is better."""
    if result.keys() != baseline.keys():
        raise ValueError(f"dv365.metrics.relative_deltas: the results have tasks {sorted(result)} and {sorted(baseline)}")
    return {
        task: relative_mse_delta(m["mse"], baseline[task]["mse"])
        if task == "watch_time"
        else relative_ne_delta(m["ne"], baseline[task]["ne"])
        for task, m in result.items()
    }
