"""The slice spec's data model (paper section 2.2, eq. 2-6; docs/design.md#slices).

A :class:`SliceSpec` lists the ≈200 sliced features of a DV365 model: each :class:`Slice` names a timeline,
the id field it pools, the embedding :class:`Table` it pools from, and ANDed filters (action / media type /
surface sets, a dwell-time range (eq. 3), a watch-ratio range with exponent β (eq. 4), a time window
``Δt ∈ (gap, T_ub]`` (eq. 6)) and optionally the debiased watch-score weight (eq. 5). Every value is checked
when an object is built (ranges, durations such as ``"3d"``, vocabularies, table references), so a spec that
exists can be compiled. Its YAML form lives in :mod:`dv365.spec.yaml_io`, its compilation into slice programs
in :mod:`dv365.spec.compiler`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dv365_ops import program as P

from ..timeline import ACTION_TYPES, EXPLICIT, ID_FIELDS, KINDS, MEDIA_TYPES, SURFACES

if TYPE_CHECKING:
    import pathlib

    from .compiler import CompiledProgram

DAY = 86_400
HOUR = 3_600

# slice field holding a set of names -> (categorical column, vocabulary)
SET_FILTERS = {
    "action_types": ("action_type", ACTION_TYPES),
    "media_types": ("media_type", MEDIA_TYPES),
    "surfaces": ("surface", SURFACES),
}
# filters that read implicit-only columns (video_duration, dwell_time) or explicit-only ones (action_type)
IMPLICIT_ONLY = ("dwell", "watch_ratio", "weight")
EXPLICIT_ONLY = ("action_types",)

# The serialization and compilation methods below delegate to yaml_io and compiler, which build on the classes
# of this module (so they import it, and it imports them where called).


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
        from .yaml_io import slice_to_dict

        return slice_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Slice:
        from .yaml_io import slice_from_dict

        return slice_from_dict(data)


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
        from .compiler import compile_spec

        return compile_spec(self)

    # serialization ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from .yaml_io import spec_to_dict

        return spec_to_dict(self)

    def to_yaml(self) -> str:
        """Expanded YAML (one entry per slice); ``SliceSpec.from_yaml(spec.to_yaml()) == spec``."""
        from .yaml_io import spec_to_yaml

        return spec_to_yaml(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SliceSpec:
        from .yaml_io import spec_from_dict

        return spec_from_dict(data)

    @classmethod
    def from_yaml(cls, source: str | pathlib.Path) -> SliceSpec:
        """Load from a YAML file path or YAML text (expanded entries and ``product:`` families may mix)."""
        from .yaml_io import spec_from_yaml

        return spec_from_yaml(source)


# values: durations, numbers, ranges (what the constructors above check) -----------------------------
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
