"""The slice spec compiler: one slice program per timeline (layout: :mod:`dv365_ops.program`) that the slicing
ops evaluate (paper eq. 2-6; docs/design.md#slices)."""

from __future__ import annotations

import dataclasses

import torch

from dv365_ops import program as P

from ..timeline import CAT_FIELDS, KINDS, TimelineBatch
from .model import SET_FILTERS, SliceSpec


@dataclasses.dataclass(frozen=True, eq=False)
class CompiledProgram:
    """One timeline's slice program (layout: :mod:`dv365_ops.program`) plus what a caller needs to run it.

    ``prog_i[s, TABLE]`` indexes ``tables`` / ``id_fields``; ``slice_index[s]`` is the position of the
    timeline's slice ``s`` in the spec.
    """

    timeline: str
    prog_i: torch.Tensor
    prog_f: torch.Tensor
    tables: tuple[str, ...]
    id_fields: tuple[str, ...]
    slice_index: torch.Tensor
    slice_names: tuple[str, ...]

    @property
    def num_slices(self) -> int:
        return len(self.slice_names)

    def ids(self, batch: TimelineBatch) -> list[torch.Tensor]:
        """The id column each table pools, in program table order (views of ``batch.ids``, no copy)."""
        return [batch.column(f) for f in self.id_fields]


def compile_spec(spec: SliceSpec) -> dict[str, CompiledProgram]:
    """One :class:`CompiledProgram` per timeline (``S_t = 0`` rows for a timeline without slices)."""
    return {kind: _compile_timeline(spec, kind) for kind in KINDS}


def _compile_timeline(spec: SliceSpec, kind: str) -> CompiledProgram:
    positions = [i for i, s in enumerate(spec.slices) if s.timeline == kind]
    used = {spec.slices[i].table for i in positions}
    tables = tuple(t.name for t in spec.tables if t.name in used)
    id_fields = tuple(spec.table(name).id_field for name in tables)
    prog_i = torch.zeros(len(positions), P.NUM_INT, dtype=torch.int64)
    prog_f = torch.zeros(len(positions), P.NUM_FLOAT, dtype=torch.float64)
    cat_columns = CAT_FIELDS[kind]
    for row, i in enumerate(positions):
        s = spec.slices[i]
        ints = [0] * P.NUM_INT
        floats = [0.0] * P.NUM_FLOAT
        ints[P.TABLE] = tables.index(s.table)
        filters = [
            (cat_columns.index(column), vocab, getattr(s, field))
            for field, (column, vocab) in SET_FILTERS.items()
            if getattr(s, field) is not None
        ]
        for j in range(P.NUM_CAT_FILTERS):
            ints[P.CAT_FIELD[j]] = -1
        for j, (column, vocab, names) in enumerate(filters):
            mask = sum(1 << vocab.index(n) for n in names)
            ints[P.CAT_FIELD[j]] = column
            ints[P.CAT_MASK[j]] = mask - (1 << 64) if mask >= 1 << 63 else mask
        ints[P.WIN_LO] = s.gap
        ints[P.WIN_HI] = P.NO_UPPER_BOUND if s.window is None else s.window
        flags = 0
        floats[P.BETA] = s.beta
        floats[P.GAMMA] = 1.0
        if s.dwell is not None:
            flags |= P.DWELL_FILTER
            floats[P.DWELL_LO], floats[P.DWELL_HI] = s.dwell.compiled()
        if s.watch_ratio is not None:
            flags |= P.RATIO_FILTER
            floats[P.RATIO_LO], floats[P.RATIO_HI] = s.watch_ratio.compiled()
        if s.weight is not None:
            flags |= P.WEIGHTED
            floats[P.GAMMA], floats[P.S0] = s.weight.gamma, s.weight.s0
        ints[P.FLAGS] = flags
        prog_i[row] = torch.tensor(ints, dtype=torch.int64)
        prog_f[row] = torch.tensor(floats, dtype=torch.float64)
    return CompiledProgram(
        timeline=kind,
        prog_i=prog_i,
        prog_f=prog_f,
        tables=tables,
        id_fields=id_fields,
        slice_index=torch.tensor(positions, dtype=torch.int64),
        slice_names=tuple(spec.slices[i].name for i in positions),
    )
