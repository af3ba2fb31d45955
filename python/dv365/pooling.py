"""Sliced mean pooling of UniTi timelines (paper eq. 2-6 with mean / weighted mean pooling; docs/design.md#slices).

:class:`MultiSlicePooling` owns the embedding tables of a :class:`~dv365.spec.SliceSpec` and turns a batch's
explicit and implicit timelines into the pooled tokens ``[B, S, D]`` that the user tower consumes, with one
fused ``dv365_ops.sliced_pool`` call per timeline. :func:`sliced_kjt` emits the same slices as a TorchRec
``KeyedJaggedTensor`` (one key per slice) for users who pool with TorchRec's ``EmbeddingBagCollection``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
from torch import nn

import dv365_ops

from .spec import CompiledProgram, SliceSpec
from .timeline import EXPLICIT, IMPLICIT, KINDS, TimelineBatch


def _sliced_pool(tables, ids, batch: TimelineBatch, request_ts, prog_i, prog_f, sparse: bool):
    return dv365_ops.sliced_pool(
        tables, ids, batch.offsets, batch.ts, batch.cats, batch.floats, request_ts, prog_i, prog_f, sparse=sparse
    )


def _slice_timeline(ids, batch: TimelineBatch, request_ts, prog_i, prog_f):
    return dv365_ops.slice_timeline(ids, batch.offsets, batch.ts, batch.cats, batch.floats, request_ts, prog_i, prog_f)


def _check_inputs(
    where: str, spec: SliceSpec, explicit: TimelineBatch | None, implicit: TimelineBatch | None, request_ts: torch.Tensor
):
    batches = {EXPLICIT: explicit, IMPLICIT: implicit}
    num_users = None
    for kind, batch in batches.items():
        if batch is None:
            if spec.timeline_slices(kind):
                raise ValueError(f"{where}: the spec has {kind} slices but no {kind} timeline was given")
            continue
        if not isinstance(batch, TimelineBatch) or batch.kind != kind:
            raise ValueError(f"{where}: {kind} must be a TimelineBatch of kind {kind!r}, got {getattr(batch, 'kind', type(batch).__name__)!r}")
        if num_users is not None and batch.num_users != num_users:
            raise ValueError(f"{where}: explicit has {num_users} users but implicit has {batch.num_users}")
        num_users = batch.num_users
    if request_ts.dtype != torch.int64 or request_ts.shape != (num_users,):
        raise ValueError(
            f"{where}: request_ts must be int64 of shape ({num_users},), got {request_ts.dtype} {tuple(request_ts.shape)}"
        )
    return batches, num_users


_ID_RANGE = re.compile(r"ids\[(\d+)\]\[(\d+)\] = (-?\d+) is out of range for a table of (\d+) rows")


def _name_table(error: RuntimeError, kind: str, prog: CompiledProgram, spec: SliceSpec) -> IndexError | None:
    """The op names an out-of-range id by its position in the program's table list; say which spec table and id
    field that is, and why it happens (the table was sized below the data's vocabulary)."""
    m = _ID_RANGE.search(str(error))
    if m is None:
        return None
    t, e, value, rows = (int(g) for g in m.groups())
    name = prog.tables[t]
    field = next((x.id_field for x in spec.tables if x.name == name), "?")
    return IndexError(
        f"MultiSlicePooling: table {name!r} has {rows} rows but the {kind} timeline's {field} ids reach {value} "
        f"(event {e}): the table is smaller than the data's vocabulary; size the tables from the data, e.g. "
        f"load_default_spec(num_rows=dataset.vocab_sizes) or MultiSlicePooling(spec, num_rows=...)")


class MultiSlicePooling(nn.Module):
    """Pooled slice tokens ``[B, S, dim]`` in spec order (paper eq. 2-6, mean pooling; weighted mean for
    slices with the debiased score, eq. 5). An empty slice pools to zeros.

    One embedding table per spec table (``self.tables[name]``, ``[num_rows, dim]``); ``num_rows`` overrides
    the spec's capacities by table name or id field. ``sparse=True`` asks the fused op for sparse table
    gradients (use a sparse-aware optimizer).
    """

    def __init__(
        self,
        spec: SliceSpec,
        dim: int | None = None,
        num_rows: Mapping[str, int] | None = None,
        dtype: torch.dtype = torch.float32,
        sparse: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if num_rows:
            spec = spec.with_num_rows(num_rows)
        missing = [t.name for t in spec.tables if t.num_rows is None]
        if missing:
            raise ValueError(f"MultiSlicePooling: tables {missing} have no num_rows; pass num_rows={{table or id field: rows}}")
        self.spec = spec
        self.dim = dim or spec.dim
        self.sparse = sparse
        self.tables = nn.ParameterDict(
            {t.name: nn.Parameter(torch.empty(t.num_rows, self.dim, dtype=dtype, device=device)) for t in spec.tables}
        )
        self.programs: dict[str, CompiledProgram] = {k: p for k, p in spec.compile().items() if p.num_slices}
        for kind, prog in self.programs.items():
            self.register_buffer(f"_{kind}_prog_i", prog.prog_i.to(device), persistent=False)
            # kept as int64 bits so that module.to(dtype) cannot round the float64 bounds
            self.register_buffer(f"_{kind}_prog_f", prog.prog_f.view(torch.int64).to(device), persistent=False)
        # cat(per-timeline outputs)[:, order] is spec order
        positions = torch.cat([self.programs[k].slice_index for k in KINDS if k in self.programs])
        self._identity_order = bool((positions == torch.arange(len(spec))).all())
        self.register_buffer("_order", torch.argsort(positions).to(device), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for table in self.tables.values():
            nn.init.uniform_(table, -1 / math.sqrt(self.dim), 1 / math.sqrt(self.dim))

    @property
    def num_slices(self) -> int:
        return len(self.spec)

    def extra_repr(self) -> str:
        per_timeline = ", ".join(f"{p.num_slices} {k}" for k, p in self.programs.items())
        return f"slices={self.num_slices} ({per_timeline}), tables={len(self.tables)}, dim={self.dim}, sparse={self.sparse}"

    def forward(
        self,
        explicit: TimelineBatch | None,
        implicit: TimelineBatch | None,
        request_ts: torch.Tensor,
        return_weight_sum: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``pooled [B, S, dim]`` in spec order (and ``weight_sum float32 [B, S]`` when asked: the number of
        selected events, or their summed scores for weighted slices)."""
        batches, _ = _check_inputs("MultiSlicePooling", self.spec, explicit, implicit, request_ts)
        pooled, wsums = [], []
        for kind, prog in self.programs.items():
            batch = batches[kind]
            prog_i = getattr(self, f"_{kind}_prog_i")
            prog_f = getattr(self, f"_{kind}_prog_f").view(torch.float64)
            tables = [self.tables[name] for name in prog.tables]
            try:
                p, w = _sliced_pool(tables, prog.ids(batch), batch, request_ts, prog_i, prog_f, self.sparse)
            except RuntimeError as e:
                named = _name_table(e, kind, prog, self.spec)
                if named is None:
                    raise
                raise named from e
            pooled.append(p)
            wsums.append(w)
        out, wsum = (pooled[0], wsums[0]) if len(pooled) == 1 else (torch.cat(pooled, 1), torch.cat(wsums, 1))
        if not self._identity_order:
            out, wsum = out.index_select(1, self._order), wsum.index_select(1, self._order)
        return (out, wsum) if return_weight_sum else out


def sliced_kjt(
    spec: SliceSpec,
    explicit: TimelineBatch | None,
    implicit: TimelineBatch | None,
    request_ts: torch.Tensor,
):
    """The slices as a weighted TorchRec ``KeyedJaggedTensor``: keys = slice names in spec order, each key's
    values = the ids its table pools, weights = 1 (or the debiased score for weighted slices).

    Feed it to an ``EmbeddingBagCollection`` built from :func:`embedding_bag_configs`; with mean pooling it
    equals :class:`MultiSlicePooling` on the unweighted slices.
    """
    batches, _ = _check_inputs("sliced_kjt", spec, explicit, implicit, request_ts)
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    parts, positions = [], []
    for kind, prog in spec.compile().items():
        if not prog.num_slices:
            continue
        batch = batches[kind]
        prog_i, prog_f = prog.prog_i.to(batch.device), prog.prog_f.to(batch.device)
        values, weights, lengths = _slice_timeline(prog.ids(batch), batch, request_ts, prog_i, prog_f)
        parts.append(KeyedJaggedTensor(keys=list(prog.slice_names), values=values, weights=weights, lengths=lengths))
        positions.extend(prog.slice_index.tolist())
    kjt = parts[0] if len(parts) == 1 else KeyedJaggedTensor.concat(parts)
    if positions != list(range(len(spec))):
        order = sorted(range(len(positions)), key=positions.__getitem__)
        kjt = kjt.permute(order)
    return kjt


def embedding_bag_configs(spec: SliceSpec, dim: int | None = None, pooling: str = "MEAN") -> list:
    """TorchRec ``EmbeddingBagConfig`` per spec table, its ``feature_names`` the slices pooling from it."""
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

    missing = [t.name for t in spec.tables if t.num_rows is None]
    if missing:
        raise ValueError(f"embedding_bag_configs: tables {missing} have no num_rows (see SliceSpec.with_num_rows)")
    return [
        EmbeddingBagConfig(
            name=t.name,
            num_embeddings=t.num_rows,
            embedding_dim=dim or spec.dim,
            feature_names=[s.name for s in spec.slices if s.table == t.name],
            pooling=PoolingType[pooling],
        )
        for t in spec.tables
        if any(s.table == t.name for s in spec.slices)
    ]


__all__ = ["MultiSlicePooling", "embedding_bag_configs", "sliced_kjt"]
