"""The full DV365 model (paper eq. 10): ``ŷ = Φ_ϕ(η(E^-24h), x, c)`` — multi-slice pooling, user tower η,
DLRM backbone Φ — with the multitask loss of eq. 7-8."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..data.schema import TASKS
from ..pooling import MultiSlicePooling
from ..spec import SliceSpec
from ..timeline import MEDIA_TYPES, TimelineBatch
from .backbone import DLRMBackbone
from .config import ModelConfig
from .registry import build_tower

if TYPE_CHECKING:
    from ..data.loader import Batch

# The backbone's "other user features" c and target item features x (paper 2.3.1), from what a Batch carries.
DENSE_FEATURES = (
    "log1p_explicit_length",  # events in the explicit history this request sees (after the gap cut)
    "log1p_implicit_length",
    "log1p_video_duration",  # 0 where unknown
    "video_duration_known",
)
VOCAB_FIELDS = ("media_id", "author_id", "topic_id")
# torch.compile modes that run the compiled code as CUDA graphs
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclasses.dataclass
class ModelOutput:
    """``logits`` float32 ``[B, 9]``: one per binary task, in ``dv365.data.TASKS`` order (sigmoid -> probability).
    ``watch_time`` float32 ``[B]``: the predicted *transformed* watch time ``log1p(seconds)``
    (:meth:`DV365Model.watch_time_seconds` inverts it). ``user_embedding`` ``[B, N_out, D]``: η's output, what
    export quantizes (float32, or the autocast dtype of the tower's last op under autocast)."""

    logits: torch.Tensor
    watch_time: torch.Tensor
    user_embedding: torch.Tensor


class DV365Model(nn.Module):
    """Pooling (``self.pooling``: :class:`~dv365.pooling.MultiSlicePooling`), user tower η (``self.tower``,
    ``config.tower``) and DLRM backbone Φ_ϕ (``self.backbone``: :class:`~dv365.models.DLRMBackbone`).

    ``forward(batch)`` pools the batch's timelines eagerly (the fused custom op), then runs :meth:`head` on plain
    tensors: tower + backbone, which ``torch.compile(fullgraph=True)`` traces whole (:meth:`compile_head`).

    Backbone inputs: the tower's output (flattened); dense user / item features ``DENSE_FEATURES``; sparse
    features ``user_id`` (hashed, ``user_id % backbone.user_buckets``, absent when 0), ``item_id``,
    ``author_id``, ``topic_id`` (tables of ``vocab_sizes["media_id" / "author_id" / "topic_id"]`` rows) and
    ``media_type``. Watch time is regressed as ``log1p(seconds)`` (heavy-tailed seconds would let a few long
    views dominate the MSE).
    """

    tasks = TASKS

    def __init__(self, spec: SliceSpec, config: ModelConfig, vocab_sizes: Mapping[str, int]) -> None:
        super().__init__()
        missing = [f for f in VOCAB_FIELDS if f not in vocab_sizes]
        if missing:
            raise ValueError(f"DV365Model: vocab_sizes lacks {missing} (pass Dataset.vocab_sizes), got {dict(vocab_sizes)}")
        for f in VOCAB_FIELDS:
            if isinstance(vocab_sizes[f], bool) or not isinstance(vocab_sizes[f], int) or vocab_sizes[f] < 1:
                raise ValueError(f"DV365Model: vocab_sizes[{f!r}] must be an integer >= 1, got {vocab_sizes[f]!r}")
        self.spec = spec
        self.config = config
        self.vocab_sizes = {f: int(vocab_sizes[f]) for f in VOCAB_FIELDS}
        self.pooling = MultiSlicePooling(spec, dim=config.dim, num_rows=vocab_sizes, sparse=config.sparse)
        self.tower = build_tower(config.tower.name, len(spec), config.dim, **config.tower.args)
        bb = config.backbone
        sparse_features = {"user_id": bb.user_buckets} if bb.user_buckets else {}
        sparse_features |= {
            "item_id": self.vocab_sizes["media_id"],
            "author_id": self.vocab_sizes["author_id"],
            "topic_id": self.vocab_sizes["topic_id"],
            "media_type": len(MEDIA_TYPES),
        }
        self.backbone = DLRMBackbone(
            self.tower.num_out,
            config.dim,
            len(DENSE_FEATURES),
            sparse_features,
            embedding_dim=bb.embedding_dim,
            bottom_mlp=bb.bottom_mlp,
            top_mlp=bb.top_mlp,
            num_tasks=len(TASKS),
            dropout=bb.dropout,
            sparse=config.sparse,
        )
        self._compiled_head = None
        self._head_uses_cudagraphs = False

    def extra_repr(self) -> str:
        return (
            f"slices={len(self.spec)}, dim={self.config.dim}, tower={self.config.tower.name!r} "
            f"({self.tower.num_tokens} -> {self.tower.num_out} tokens), tasks={len(TASKS)} + watch_time, "
            f"sparse={self.config.sparse}"
        )

    # forward ------------------------------------------------------------------------------------
    def embed(self, explicit: TimelineBatch, implicit: TimelineBatch, request_ts: torch.Tensor) -> torch.Tensor:
        """η(E): the user embedding ``[B, N_out, D]`` of timelines cut at ``request_ts`` (what export publishes)."""
        return self.tower(self.pooling(explicit, implicit, request_ts))

    def head(
        self,
        pooled: torch.Tensor,
        history_lengths: torch.Tensor,
        user_id: torch.Tensor,
        item_id: torch.Tensor,
        author_id: torch.Tensor,
        topic_id: torch.Tensor,
        media_type: torch.Tensor,
        video_duration: torch.Tensor,
        video_duration_mask: torch.Tensor,
        embedded: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tower + backbone on plain tensors: ``pooled [B, S, D]``, ``history_lengths`` int64 ``[B, 2]``
        (explicit, implicit events seen), the example fields of :class:`~dv365.data.Examples`; ``embedded``: the
        backbone's sparse-feature embeddings already looked up (:meth:`backbone_lookup`; then the id fields are not
        read). Returns ``(logits float32 [B, 9], watch_time float32 [B], user_embedding [B, N_out, D])``."""
        user_embedding = self.tower(pooled)
        known = video_duration_mask.to(torch.float32)
        dense = torch.stack(
            [
                torch.log1p(history_lengths[:, 0].to(torch.float32)),
                torch.log1p(history_lengths[:, 1].to(torch.float32)),
                torch.log1p(video_duration.to(torch.float32).clamp_min(0)) * known,
                known,
            ],
            dim=1,
        )
        ids = None if embedded is not None else self._backbone_ids(user_id, item_id, author_id, topic_id, media_type)
        logits, watch_time = self.backbone(user_embedding, dense, ids, embedded)
        return logits.float(), watch_time.float(), user_embedding

    def _backbone_ids(self, user_id, item_id, author_id, topic_id, media_type) -> torch.Tensor:
        ids = [item_id, author_id, topic_id, media_type.to(torch.int64)]
        if self.config.backbone.user_buckets:
            ids.insert(0, torch.remainder(user_id, self.config.backbone.user_buckets))
        return torch.stack(ids, dim=1)

    def backbone_lookup(self, user_id, item_id, author_id, topic_id, media_type) -> list[torch.Tensor]:
        """The backbone's sparse-feature embeddings of these examples (what :meth:`head` looks up itself when not
        given them)."""
        return self.backbone.lookup(self._backbone_ids(user_id, item_id, author_id, topic_id, media_type))

    def run_head(self, pooled: torch.Tensor, history_lengths: torch.Tensor, ex) -> tuple[torch.Tensor, ...]:
        """:meth:`head` (compiled when :meth:`compile_head` was called) on a batch's examples ``ex``. With CUDA
        graphs the backbone's embedding lookups run eagerly before the graph: their tables' gradients are sparse,
        which a CUDA graph cannot output; and the graph's outputs are copied out of the buffers its next replay
        overwrites."""
        fields = (ex.user_id, ex.item_id, ex.author_id, ex.topic_id, ex.media_type)
        if self._compiled_head is None:
            return self.head(pooled, history_lengths, *fields, ex.video_duration, ex.video_duration_mask)
        embedded = self.backbone_lookup(*fields) if self._head_uses_cudagraphs else None
        outputs = self._compiled_head(pooled, history_lengths, *fields, ex.video_duration, ex.video_duration_mask,
                                      embedded)
        if self._head_uses_cudagraphs:
            outputs = tuple(o.clone() for o in outputs)
        return outputs

    def compile_head(self, mode: str | None = None, **compile_kwargs) -> None:
        """Run :meth:`head` through ``torch.compile(fullgraph=True, mode=mode, **compile_kwargs)`` from now on (the
        pooling op stays eager). The state dict and parameters are unchanged.

        ``mode``: torch.compile's (None = "default"). At W40K the head's forward + backward is a few hundred
        small kernels for 32 examples, so its time is launches: "reduce-overhead" replays them as CUDA graphs
        (one graph per input shape: a short last batch records another, so training with it drops the last
        short batch). :meth:`run_head` then looks the backbone's embeddings up eagerly and copies the outputs out
        of the graphs' static buffers, so a caller may keep them across calls (evaluation collects logits batch
        after batch)."""
        compile_kwargs.setdefault("fullgraph", True)
        self._compiled_head = torch.compile(self.head, mode=mode, **compile_kwargs)
        self._head_uses_cudagraphs = mode in CUDAGRAPH_MODES

    def __getstate__(self):
        # a compiled function does not pickle or deepcopy; a copy starts eager (call compile_head again)
        state = dict(super().__getstate__())
        state["_compiled_head"] = None
        state["_head_uses_cudagraphs"] = False
        return state

    def forward(self, batch: Batch) -> ModelOutput:
        ex = batch.examples
        pooled = self.pooling(batch.explicit, batch.implicit, ex.request_ts)
        lengths = torch.stack([batch.explicit.offsets.diff(), batch.implicit.offsets.diff()], dim=1)
        return ModelOutput(*self.run_head(pooled, lengths, ex))

    # loss (paper eq. 7-8) -----------------------------------------------------------------------
    @staticmethod
    def watch_time_target(watch_time: torch.Tensor) -> torch.Tensor:
        """The regression target: ``log1p(watch_time seconds)``."""
        return torch.log1p(watch_time.to(torch.float32))

    @staticmethod
    def watch_time_seconds(prediction: torch.Tensor) -> torch.Tensor:
        """Seconds from a ``ModelOutput.watch_time`` prediction (``expm1``, at least 0)."""
        return torch.expm1(prediction.to(torch.float32)).clamp_min(0)

    def loss_terms(self, out: ModelOutput, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sums [10], counts [10])`` float32. k < 9: Σ of task k's BCE over the examples where it is observed
        (``label_mask``) and their count; k = 9: Σ of the squared error of ``log1p(watch_time)`` over
        ``watch_time_mask`` and its count. Unobserved entries contribute nothing, whatever their value."""
        ex = batch.examples
        logits = out.logits.to(torch.float32)
        bce = F.binary_cross_entropy_with_logits(logits, ex.labels.to(torch.float32), reduction="none")
        bce = torch.where(ex.label_mask, bce, torch.zeros_like(bce))
        se = (out.watch_time.to(torch.float32) - self.watch_time_target(ex.watch_time)).square()
        se = torch.where(ex.watch_time_mask, se, torch.zeros_like(se))
        sums = torch.cat([bce.sum(0), se.sum().reshape(1)])
        counts = torch.cat([ex.label_mask.sum(0), ex.watch_time_mask.sum().reshape(1)]).to(torch.float32)
        return sums, counts

    @staticmethod
    def total_loss(sums: torch.Tensor, counts: torch.Tensor, watch_time_weight: float) -> torch.Tensor:
        """Paper eq. 8, ``Σ_k BCE_k + a · MSE``, each term the mean over its observed examples:
        ``Σ_{k<9} sums_k / max(counts_k, 1) + a · sums_9 / max(counts_9, 1)``. With counts summed over DDP ranks
        (and each rank's sums), the gradient equals one process's over the whole global batch."""
        means = sums / counts.clamp_min(1)
        return means[:-1].sum() + watch_time_weight * means[-1]

    def loss(self, out: ModelOutput, batch: Batch) -> torch.Tensor:
        """The total loss of one batch on one process (``total_loss`` of its own ``loss_terms``)."""
        return self.total_loss(*self.loss_terms(out, batch), self.config.watch_time_weight)

    # parameter groups ---------------------------------------------------------------------------
    def sparse_parameters(self) -> list[nn.Parameter]:
        """The embedding tables that get sparse gradients: the pooling tables and the backbone's embeddings when
        ``config.sparse``; empty otherwise (then every parameter is dense)."""
        if not self.config.sparse:
            return []
        return list(self.pooling.tables.values()) + self.backbone.embedding_parameters()

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every parameter not in :meth:`sparse_parameters`."""
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]
