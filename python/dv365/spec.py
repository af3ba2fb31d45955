"""Declarative multi-slicing (paper section 2.2, eq. 2-6; docs/design.md#slices).

A :class:`SliceSpec` lists the ≈200 sliced features of a DV365 model: each :class:`Slice` names a timeline,
the id field it pools, the embedding :class:`Table` it pools from, and ANDed filters (action / media type /
surface sets, a dwell-time range (eq. 3), a watch-ratio range with exponent β (eq. 4), a time window
``Δt ∈ (gap, T_ub]`` (eq. 6)) and optionally the debiased watch-score weight (eq. 5). :meth:`SliceSpec.compile`
turns it into one slice program per timeline (layout: :mod:`dv365_ops.program`) that the slicing ops evaluate.

Specs are written in Python or YAML; YAML also has a compact family syntax (a ``product:`` block) so that
"action × window" is one entry. The default spec ships as ``dv365/specs/default.yaml``
(:func:`load_default_spec`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import pathlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import yaml

from dv365_ops import program as P

from .timeline import ACTION_TYPES, CAT_FIELDS, EXPLICIT, ID_FIELDS, KINDS, MEDIA_TYPES, SURFACES, TimelineBatch

DAY = 86_400
HOUR = 3_600

DEFAULT_SPEC_PATH = pathlib.Path(__file__).parent / "specs" / "default.yaml"

# slice field holding a set of names -> (categorical column, vocabulary)
SET_FILTERS = {
    "action_types": ("action_type", ACTION_TYPES),
    "media_types": ("media_type", MEDIA_TYPES),
    "surfaces": ("surface", SURFACES),
}
# filters that read implicit-only columns (video_duration, dwell_time) or explicit-only ones (action_type)
IMPLICIT_ONLY = ("dwell", "watch_ratio", "weight")
EXPLICIT_ONLY = ("action_types",)


class SpecError(ValueError):
    """A slice spec that cannot be compiled; the message names the slice (or table) and the field."""


class Range(tuple):
    """A dwell or watch-ratio range ``(lo, hi)``, each end closed or open (paper eq. 3, 4).

    A pair ``(lo, hi)`` or ``[lo, hi]`` is closed at both ends. Interval notation sets either end open:
    ``"[0, 3)"`` is the paper's "< 3 s", ``"(15, inf]"`` its "> 15 s", so that adjacent buckets
    ``[0, 3)``, ``[3, 15]``, ``(15, inf]`` share no value. It is still the tuple ``(lo, hi)``; it equals a plain
    pair only when closed. The compiler writes an open end as the adjacent float64 (:mod:`dv365_ops.program`).
    """

    lo_open: bool
    hi_open: bool

    def __new__(cls, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Range:
        self = super().__new__(cls, (lo, hi))
        self.lo_open, self.hi_open = bool(lo_open), bool(hi_open)
        return self

    @property
    def lo(self) -> float:
        return self[0]

    @property
    def hi(self) -> float:
        return self[1]

    @property
    def closed(self) -> bool:
        return not (self.lo_open or self.hi_open)

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the range (NaN never does)."""
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return bool(above and below)

    def compiled(self) -> tuple[float, float]:
        """The inclusive float64 bounds the kernels compare with: an open end becomes its neighbour, exact for
        every float64 value (no float64 lies between a number and its neighbour)."""
        lo = math.nextafter(self.lo, math.inf) if self.lo_open else self.lo
        hi = math.nextafter(self.hi, -math.inf) if self.hi_open else self.hi
        return lo, hi

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Range):
            return tuple(self) == tuple(other) and (self.lo_open, self.hi_open) == (other.lo_open, other.hi_open)
        return self.closed and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((tuple(self), self.lo_open, self.hi_open))

    def __str__(self) -> str:
        def num(x: float) -> str:
            if math.isinf(x):
                return "inf" if x > 0 else "-inf"
            return f"{x:g}" if float(f"{x:g}") == x else repr(x)  # exact, so that YAML round-trips

        return f"{'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"

    def __repr__(self) -> str:
        return f"Range({str(self)!r})" if not self.closed else f"Range({self.lo!r}, {self.hi!r})"

    def __reduce__(self):
        return (Range, (self.lo, self.hi, self.lo_open, self.hi_open))


@dataclasses.dataclass(frozen=True)
class DebiasedScore:
    """Paper eq. 5: weight ``s = ln(dwell + 1) / ln(γ·duration + 1)``; the event is kept only where ``s > s0``."""

    gamma: float
    s0: float


@dataclasses.dataclass(frozen=True)
class Table:
    """An embedding table shared by the slices of one sharing group (paper 2.2: positive vs negative
    engagement, explicit vs implicit, id type, weighted vs not, product type). It is tied to one id field."""

    name: str
    id_field: str
    num_rows: int | None = None
    group: str = ""

    def __post_init__(self) -> None:
        where = f"table {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"table: name must be a non-empty string, got {self.name!r}")
        if self.id_field not in ID_FIELDS:
            raise SpecError(f"{where}: id_field must be one of {ID_FIELDS}, got {self.id_field!r}")
        if self.num_rows is not None and (isinstance(self.num_rows, bool) or not isinstance(self.num_rows, int) or self.num_rows <= 0):
            raise SpecError(f"{where}: num_rows must be a positive integer or None, got {self.num_rows!r}")
        if not isinstance(self.group, str):
            raise SpecError(f"{where}: group must be a string, got {self.group!r}")


@dataclasses.dataclass(frozen=True)
class Slice:
    """One sliced feature: the events of ``timeline`` that pass every filter, pooled from ``table`` by ``id_field``.

    Filters (all optional, ANDed): ``action_types`` (explicit only, eq. 2), ``media_types``, ``surfaces``
    (sets of names); ``dwell`` seconds (eq. 3) and ``watch_ratio`` on ``dwell / duration ** beta`` (eq. 4), each a
    :class:`Range`: a pair ``(lo, hi)`` is inclusive, ``"[0, 3)"`` / ``"(15, inf]"`` open an end;
    ``Δt = request_ts - ts ∈ (gap, window]`` seconds (eq. 6; ``window=None`` is the full horizon; durations may be
    written ``"3d"``, ``"24h"``). ``weight`` is None (mean pooling) or :class:`DebiasedScore` (weighted mean, eq. 5).

    Unknown fields (a NaN, negative or infinite dwell; a NaN, negative, infinite or zero duration) pass no filter
    that reads them: a photo (duration 0) has no watch ratio and no debiased score (:mod:`dv365_ops.program`).
    The 24 h cut of the distant-interest objective (paper eq. 9) belongs to the loader (``Loader(gap=86400)``
    removes the last 24 h from the whole history); a slice's own ``gap`` skips further back from the request,
    so a slice ``gap`` at or below the loader's changes nothing.
    """

    name: str
    timeline: str
    id_field: str
    table: str
    action_types: frozenset[str] | None = None
    media_types: frozenset[str] | None = None
    surfaces: frozenset[str] | None = None
    dwell: Range | None = None
    watch_ratio: Range | None = None
    beta: float = 1.0
    window: int | None = None
    gap: int = 0
    weight: DebiasedScore | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"slice: name must be a non-empty string, got {self.name!r}")
        where = f"slice {self.name!r}"
        set_ = functools.partial(object.__setattr__, self)
        if self.timeline not in KINDS:
            raise SpecError(f"{where}: timeline must be one of {KINDS}, got {self.timeline!r}")
        if self.id_field not in ID_FIELDS:
            raise SpecError(f"{where}: id_field must be one of {ID_FIELDS}, got {self.id_field!r}")
        if not isinstance(self.table, str) or not self.table:
            raise SpecError(f"{where}: table must be a table name, got {self.table!r}")
        for field, (_, vocab) in SET_FILTERS.items():
            value = getattr(self, field)
            if value is None:
                continue
            names = [value] if isinstance(value, str) else list(value)
            unknown = [n for n in names if n not in vocab]
            if unknown:
                raise SpecError(f"{where}: {field} has unknown names {unknown} (known: {list(vocab)})")
            if not names:
                raise SpecError(f"{where}: {field} is empty (it would select nothing; leave it out for no filter)")
            set_(field, frozenset(names))
        for field in ("dwell", "watch_ratio"):
            value = getattr(self, field)
            if value is not None:
                set_(field, _range(where, field, value))
        beta = _number(where, "beta", self.beta)
        if not beta > 0 or not math.isfinite(beta):
            raise SpecError(f"{where}: beta must be a finite number > 0, got {self.beta!r}")
        if beta != 1.0 and self.watch_ratio is None:
            raise SpecError(f"{where}: beta only applies to a watch_ratio filter, which this slice does not have")
        set_("beta", beta)
        if self.weight is not None:
            if not isinstance(self.weight, DebiasedScore):
                raise SpecError(f"{where}: weight must be None or DebiasedScore(gamma, s0), got {self.weight!r}")
            gamma = _number(where, "weight.gamma", self.weight.gamma)
            s0 = _number(where, "weight.s0", self.weight.s0)
            if not gamma > 0 or not math.isfinite(gamma):
                raise SpecError(f"{where}: weight.gamma must be a finite number > 0, got {self.weight.gamma!r}")
            if not math.isfinite(s0):
                raise SpecError(f"{where}: weight.s0 must be finite, got {self.weight.s0!r}")
            set_("weight", DebiasedScore(gamma, s0))
        set_("window", parse_duration(self.window, f"{where}: window", allow_inf=True))
        set_("gap", parse_duration(self.gap, f"{where}: gap", allow_inf=False))
        if self.window is not None and self.window <= self.gap:
            raise SpecError(
                f"{where}: window ({format_duration(self.window)}) must be greater than gap ({format_duration(self.gap)})"
            )
        forbidden = IMPLICIT_ONLY if self.timeline == EXPLICIT else EXPLICIT_ONLY
        for field in forbidden:
            if getattr(self, field) is not None:
                raise SpecError(f"{where}: {field} is not available on the {self.timeline} timeline")

    @property
    def weighted(self) -> bool:
        return self.weight is not None

    def to_dict(self) -> dict[str, Any]:
        """The YAML form: required fields, then only the filters that are set."""
        out: dict[str, Any] = {"name": self.name, "timeline": self.timeline, "id_field": self.id_field, "table": self.table}
        for field, (_, vocab) in SET_FILTERS.items():
            value = getattr(self, field)
            if value is not None:
                out[field] = [n for n in vocab if n in value]
        for field in ("dwell", "watch_ratio"):
            value = getattr(self, field)
            if value is not None:
                out[field] = list(value) if value.closed else str(value)
        if self.beta != 1.0:
            out["beta"] = self.beta
        out["window"] = format_duration(self.window)
        if self.gap:
            out["gap"] = format_duration(self.gap)
        if self.weight is not None:
            out["weight"] = {"debiased_score": {"gamma": self.weight.gamma, "s0": self.weight.s0}}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Slice:
        name = data.get("name", "?")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"slice {name!r}: unknown field(s) {unknown} (known: {sorted(known)})")
        missing = [f for f in ("name", "timeline", "id_field", "table") if f not in data]
        if missing:
            raise SpecError(f"slice {name!r}: missing field(s) {missing}")
        kwargs = dict(data)
        if kwargs.get("weight") is not None:
            kwargs["weight"] = _weight_from_yaml(name, kwargs["weight"])
        return cls(**kwargs)


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


@dataclasses.dataclass(frozen=True)
class SliceSpec:
    """An ordered list of slices, the tables they pool from, and the embedding dim (docs/design.md#slices)."""

    slices: tuple[Slice, ...]
    tables: tuple[Table, ...]
    dim: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "slices", tuple(self.slices))
        object.__setattr__(self, "tables", tuple(self.tables))
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim <= 0:
            raise SpecError(f"spec: dim must be a positive integer, got {self.dim!r}")
        if not self.slices:
            raise SpecError("spec: needs at least one slice")
        tables: dict[str, Table] = {}
        for t in self.tables:
            if not isinstance(t, Table):
                raise SpecError(f"spec: tables must be Table objects, got {t!r}")
            if t.name in tables:
                raise SpecError(f"table {t.name!r}: duplicate table name")
            tables[t.name] = t
        seen: set[str] = set()
        for s in self.slices:
            if not isinstance(s, Slice):
                raise SpecError(f"spec: slices must be Slice objects, got {s!r}")
            if s.name in seen:
                raise SpecError(f"slice {s.name!r}: duplicate slice name")
            seen.add(s.name)
            table = tables.get(s.table)
            if table is None:
                raise SpecError(f"slice {s.name!r}: table {s.table!r} does not exist (tables: {sorted(tables)})")
            if table.id_field != s.id_field:
                raise SpecError(
                    f"slice {s.name!r}: id_field {s.id_field!r} does not match table {s.table!r}, which holds {table.id_field!r}"
                )

    # access -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.slices)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.slices)

    def table(self, name: str) -> Table:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(f"spec has no table {name!r}")

    def timeline_slices(self, timeline: str) -> tuple[Slice, ...]:
        return tuple(s for s in self.slices if s.timeline == timeline)

    def with_num_rows(self, num_rows: Mapping[str, int]) -> SliceSpec:
        """A copy whose tables take their capacity from ``num_rows``, keyed by table name or by id field
        (a table name wins)."""
        known = {t.name for t in self.tables} | set(ID_FIELDS)
        unknown = sorted(set(num_rows) - known)
        if unknown:
            raise SpecError(f"spec: num_rows has unknown keys {unknown} (use table names or id fields)")
        tables = [
            dataclasses.replace(t, num_rows=num_rows.get(t.name, num_rows.get(t.id_field, t.num_rows))) for t in self.tables
        ]
        return dataclasses.replace(self, tables=tuple(tables))

    # compilation --------------------------------------------------------------------------------
    def compile(self) -> dict[str, CompiledProgram]:
        """One :class:`CompiledProgram` per timeline (``S_t = 0`` rows for a timeline without slices)."""
        return self._compiled

    @functools.cached_property
    def _compiled(self) -> dict[str, CompiledProgram]:
        return {kind: _compile_timeline(self, kind) for kind in KINDS}

    # serialization ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        tables = {}
        for t in self.tables:
            entry: dict[str, Any] = {"id_field": t.id_field}
            if t.num_rows is not None:
                entry["num_rows"] = t.num_rows
            if t.group:
                entry["group"] = t.group
            tables[t.name] = entry
        return {"dim": self.dim, "tables": tables, "slices": [s.to_dict() for s in self.slices]}

    def to_yaml(self) -> str:
        """Expanded YAML (one entry per slice); ``SliceSpec.from_yaml(spec.to_yaml()) == spec``."""
        return yaml.dump(self.to_dict(), Dumper=_FlowListDumper, sort_keys=False, width=120)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SliceSpec:
        if not isinstance(data, Mapping):
            raise SpecError(f"spec: expected a mapping with dim, tables and slices, got {type(data).__name__}")
        unknown = sorted(set(data) - {"dim", "tables", "slices"})
        if unknown:
            raise SpecError(f"spec: unknown top-level field(s) {unknown} (known: dim, tables, slices)")
        raw_tables = data.get("tables") or {}
        if not isinstance(raw_tables, Mapping):
            raise SpecError("spec: tables must be a mapping of table name to {id_field, num_rows, group}")
        tables = []
        for name, entry in raw_tables.items():
            entry = dict(entry or {})
            bad = sorted(set(entry) - {"id_field", "num_rows", "group"})
            if bad:
                raise SpecError(f"table {name!r}: unknown field(s) {bad} (known: group, id_field, num_rows)")
            if "id_field" not in entry:
                raise SpecError(f"table {name!r}: missing field 'id_field'")
            tables.append(Table(name=name, **entry))
        slices = []
        for entry in data.get("slices") or []:
            if not isinstance(entry, Mapping):
                raise SpecError(f"spec: each slice must be a mapping, got {entry!r}")
            slices.extend(expand_family(entry) if "product" in entry else [Slice.from_dict(entry)])
        return cls(slices=tuple(slices), tables=tuple(tables), dim=data.get("dim", 256))

    @classmethod
    def from_yaml(cls, source: str | pathlib.Path) -> SliceSpec:
        """Load from a YAML file path or YAML text (expanded entries and ``product:`` families may mix)."""
        if isinstance(source, pathlib.Path) or ("\n" not in source and pathlib.Path(source).suffix in (".yaml", ".yml")):
            text = pathlib.Path(source).read_text()
        else:
            text = source
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SpecError(f"spec: invalid YAML: {e}") from e
        return cls.from_dict(data)


def load_default_spec(num_rows: Mapping[str, int] | None = None) -> SliceSpec:
    """The ≈200-slice default spec shipped with the package (``dv365/specs/default.yaml``), mirroring the
    paper's families (section 2.2); ``num_rows`` sets table capacities by table name or id field."""
    spec = _default_spec()
    return spec.with_num_rows(num_rows) if num_rows else spec


@functools.cache
def _default_spec() -> SliceSpec:
    return SliceSpec.from_yaml(DEFAULT_SPEC_PATH)


class _FlowListDumper(yaml.SafeDumper):
    """Lists of scalars (sets of names, ranges) on one line: ``action_types: [like, save]``."""


_FlowListDumper.add_representer(
    list,
    lambda dumper, data: dumper.represent_sequence(
        "tag:yaml.org,2002:seq", data, flow_style=all(not isinstance(x, (dict, list)) for x in data)
    ),
)


# family syntax ------------------------------------------------------------------------------------
def expand_family(entry: Mapping[str, Any]) -> list[Slice]:
    """Expand a ``product:`` block: the cartesian product of its axes, first axis outermost.

    An axis named after a slice field takes a list of values (each labelled by its value) or a mapping
    ``label: value``; a name for a set field is shorthand for the one-element set. An axis with any other
    name is a *variant* axis: a mapping ``label: {field: value, ...}`` that sets several fields at once (e.g.
    a dwell bucket together with its positive or negative table). ``name`` is a template whose ``{axis}``
    placeholders take the labels. Example::

        - name: "imp_dwell_{bucket}_media_{window}"
          timeline: implicit
          id_field: media_id
          product:
            bucket:
              lt3: {dwell: [0, 3], table: imp_neg_media}
              ge15: {dwell: [15, .inf], table: imp_pos_media}
            window: [3d, 7d, inf]
    """
    template = entry.get("name")
    axes = entry["product"]
    where = f"family {template!r}"
    if not isinstance(template, str):
        raise SpecError(f"{where}: needs a name template with {{axis}} placeholders")
    if not isinstance(axes, Mapping) or not axes:
        raise SpecError(f"{where}: product must be a non-empty mapping of axis to values")
    known = {f.name for f in dataclasses.fields(Slice)} - {"name"}
    base = {k: v for k, v in entry.items() if k not in ("product", "name")}
    # each axis: a list of (label, {field: value})
    labelled: list[list[tuple[str, dict[str, Any]]]] = []
    for axis, values in axes.items():
        if axis in known:
            if isinstance(values, Mapping) and values:
                labelled.append([(str(label), {axis: value}) for label, value in values.items()])
            elif isinstance(values, list) and values:
                labelled.append([(_label(v), {axis: v}) for v in values])
            else:
                raise SpecError(f"{where}: product.{axis} must be a non-empty list or a mapping label: value")
        elif isinstance(values, Mapping) and values and all(isinstance(v, Mapping) for v in values.values()):
            for label, fields in values.items():
                bad = sorted(set(fields) - known)
                if bad:
                    raise SpecError(f"{where}: product.{axis}.{label} has unknown field(s) {bad} (known: {sorted(known)})")
            labelled.append([(str(label), dict(fields)) for label, fields in values.items()])
        else:
            raise SpecError(
                f"{where}: product has unknown field {axis!r} (a variant axis maps labels to field mappings; "
                f"known fields: {sorted(known)})"
            )
    out = []
    for combo in itertools.product(*labelled):
        labels = {axis: label for axis, (label, _) in zip(axes, combo)}
        try:
            name = template.format(**labels)
        except (KeyError, IndexError, ValueError) as e:
            raise SpecError(f"{where}: name template needs placeholders from the product axes {list(axes)}: {e}") from e
        fields = dict(base, name=name)
        for _, values in combo:
            clash = sorted(set(values) & set(fields))
            if clash:
                raise SpecError(f"{where}: field(s) {clash} set twice (in the family and its product, or by two axes)")
            fields.update(values)
        out.append(Slice.from_dict(fields))
    return out


def _label(value: Any) -> str:
    if value is None:
        return "inf"
    if isinstance(value, (list, tuple)):
        return "_".join(_label(v) for v in value)
    if isinstance(value, float):
        return "inf" if value == math.inf else f"{value:g}"
    return str(value)


# durations --------------------------------------------------------------------------------------
_UNITS = {"d": DAY, "h": HOUR, "m": 60, "s": 1}
_DURATION = re.compile(r"^\s*(\d+)\s*([dhms]?)\s*$")


def parse_duration(value: Any, what: str, allow_inf: bool) -> int | None:
    """Seconds from an int or a string such as ``"3d"``, ``"24h"``, ``"90m"``, ``"15s"``; ``None`` /
    ``"inf"`` mean no upper bound where ``allow_inf``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("inf", "∞")) or value == math.inf:
        if allow_inf:
            return None
        raise SpecError(f"{what} must be a finite duration, got {value!r}")
    if isinstance(value, bool):
        raise SpecError(f"{what} must be a duration (seconds or e.g. '3d'), got {value!r}")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, float) and value.is_integer():
        seconds = int(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = int(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise SpecError(f"{what} must be a duration (seconds or e.g. '3d', '24h', 'inf'), got {value!r}")
    if seconds < 0 or seconds >= P.NO_UPPER_BOUND:
        raise SpecError(f"{what} must be >= 0 seconds and finite, got {value!r}")
    return seconds


def format_duration(seconds: int | None) -> str:
    """The shortest exact form: ``"3d"``, ``"24h"`` is written ``"1d"``, ``"inf"`` for None."""
    if seconds is None:
        return "inf"
    for unit, size in _UNITS.items():
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return "0s"


def _number(where: str, field: str, value: Any) -> float:
    if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", ".inf"):
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{where}: {field} must be a number, got {value!r}")
    return float(value)


_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*$")


def _range(where: str, field: str, value: Any) -> Range:
    if isinstance(value, Range):
        lo_open, hi_open, pair = value.lo_open, value.hi_open, [value.lo, value.hi]
    elif isinstance(value, str):
        m = _INTERVAL.match(value)
        if m is None:
            raise SpecError(
                f"{where}: {field} must be a pair (lo, hi) or an interval such as '[0, 3)' or '(15, inf]', got {value!r}"
            )
        lo_open, hi_open, pair = m.group(1) == "(", m.group(4) == ")", [m.group(2), m.group(3)]
    elif isinstance(value, Iterable):
        lo_open, hi_open, pair = False, False, list(value)
        if len(pair) != 2:
            raise SpecError(f"{where}: {field} must be a pair (lo, hi), got {value!r}")
    else:
        raise SpecError(f"{where}: {field} must be a pair (lo, hi), got {value!r}")
    lo, hi = (_number(where, field, _float_text(v)) for v in pair)
    if math.isnan(lo) or math.isnan(hi):
        raise SpecError(f"{where}: {field} bounds must not be NaN, got {value!r}")
    r = Range(lo, hi, lo_open, hi_open)
    clo, chi = r.compiled()
    if lo > hi:
        raise SpecError(f"{where}: {field} is an empty range: lo {lo:g} > hi {hi:g}")
    if clo > chi:
        raise SpecError(f"{where}: {field} is an empty range: {r} holds no value")
    return r


def _float_text(v: Any) -> Any:
    """An interval's bound as written (``"3"``, ``"1e-3"``, ``"inf"``) as a number; anything else unchanged."""
    if isinstance(v, str) and v.strip().lower() not in ("inf", "+inf", ".inf", "-inf", "-.inf"):
        try:
            return float(v)
        except ValueError:
            return v
    if isinstance(v, str) and v.strip().lower() in ("-inf", "-.inf"):
        return -math.inf
    return v


def _weight_from_yaml(name: str, value: Any) -> DebiasedScore:
    if isinstance(value, DebiasedScore):
        return value
    if not isinstance(value, Mapping) or set(value) != {"debiased_score"} or not isinstance(value["debiased_score"], Mapping):
        raise SpecError(f"slice {name!r}: weight must be {{debiased_score: {{gamma: ..., s0: ...}}}}, got {value!r}")
    params = dict(value["debiased_score"])
    if set(params) != {"gamma", "s0"}:
        raise SpecError(f"slice {name!r}: weight.debiased_score needs exactly gamma and s0, got {sorted(params)}")
    return DebiasedScore(**params)


# compiler -----------------------------------------------------------------------------------------
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


__all__ = [
    "DAY",
    "HOUR",
    "CompiledProgram",
    "DebiasedScore",
    "Slice",
    "SliceSpec",
    "SpecError",
    "Range",
    "Table",
    "expand_family",
    "format_duration",
    "load_default_spec",
    "parse_duration",
]
