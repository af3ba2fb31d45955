"""The slice spec's YAML form (docs/design.md#slices): dicts and YAML text to and from the data model
(:mod:`dv365.spec.model`), the compact family syntax (a ``product:`` block, so that "action × window" is one
entry), and the default spec shipped as ``dv365/specs/default.yaml`` (:func:`load_default_spec`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import pathlib
from collections.abc import Mapping
from typing import Any

import yaml

from .model import SET_FILTERS, DebiasedScore, Slice, SliceSpec, SpecError, Table, format_duration

DEFAULT_SPEC_PATH = pathlib.Path(__file__).parents[1] / "specs" / "default.yaml"


def slice_to_dict(s: Slice) -> dict[str, Any]:
    """The YAML form of one slice: required fields, then only the filters that are set."""
    out: dict[str, Any] = {"name": s.name, "timeline": s.timeline, "id_field": s.id_field, "table": s.table}
    for field, (_, vocab) in SET_FILTERS.items():
        value = getattr(s, field)
        if value is not None:
            out[field] = [n for n in vocab if n in value]
    for field in ("dwell", "watch_ratio"):
        value = getattr(s, field)
        if value is not None:
            out[field] = list(value) if value.closed else str(value)
    if s.beta != 1.0:
        out["beta"] = s.beta
    out["window"] = format_duration(s.window)
    if s.gap:
        out["gap"] = format_duration(s.gap)
    if s.weight is not None:
        out["weight"] = {"debiased_score": {"gamma": s.weight.gamma, "s0": s.weight.s0}}
    return out


def slice_from_dict(data: Mapping[str, Any]) -> Slice:
    """One expanded slice entry (a mapping of :class:`Slice` fields; ``weight`` as ``{debiased_score: ...}``)."""
    name = data.get("name", "?")
    known = {f.name for f in dataclasses.fields(Slice)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"slice {name!r}: unknown field(s) {unknown} (known: {sorted(known)})")
    missing = [f for f in ("name", "timeline", "id_field", "table") if f not in data]
    if missing:
        raise SpecError(f"slice {name!r}: missing field(s) {missing}")
    kwargs = dict(data)
    if kwargs.get("weight") is not None:
        kwargs["weight"] = _weight_from_yaml(name, kwargs["weight"])
    return Slice(**kwargs)


def spec_to_dict(spec: SliceSpec) -> dict[str, Any]:
    """The expanded YAML form: ``dim``, ``tables`` by name, one entry per slice."""
    tables = {}
    for t in spec.tables:
        entry: dict[str, Any] = {"id_field": t.id_field}
        if t.num_rows is not None:
            entry["num_rows"] = t.num_rows
        if t.group:
            entry["group"] = t.group
        tables[t.name] = entry
    return {"dim": spec.dim, "tables": tables, "slices": [slice_to_dict(s) for s in spec.slices]}


def spec_to_yaml(spec: SliceSpec) -> str:
    """Expanded YAML (one entry per slice); ``spec_from_yaml(spec_to_yaml(spec)) == spec``."""
    return yaml.dump(spec_to_dict(spec), Dumper=_FlowListDumper, sort_keys=False, width=120)


def spec_from_dict(data: Mapping[str, Any]) -> SliceSpec:
    """A spec from its YAML form; slice entries may be expanded or ``product:`` families."""
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
        slices.extend(expand_family(entry) if "product" in entry else [slice_from_dict(entry)])
    return SliceSpec(slices=tuple(slices), tables=tuple(tables), dim=data.get("dim", 256))


def spec_from_yaml(source: str | pathlib.Path) -> SliceSpec:
    """Load from a YAML file path or YAML text (expanded entries and ``product:`` families may mix)."""
    if isinstance(source, pathlib.Path) or ("\n" not in source and pathlib.Path(source).suffix in (".yaml", ".yml")):
        text = pathlib.Path(source).read_text()
    else:
        text = source
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"spec: invalid YAML: {e}") from e
    return spec_from_dict(data)


def load_default_spec(num_rows: Mapping[str, int] | None = None) -> SliceSpec:
    """The ≈200-slice default spec shipped with the package (``dv365/specs/default.yaml``), mirroring the
    paper's families (section 2.2); ``num_rows`` sets table capacities by table name or id field."""
    spec = _default_spec()
    return spec.with_num_rows(num_rows) if num_rows else spec


@functools.cache
def _default_spec() -> SliceSpec:
    return spec_from_yaml(DEFAULT_SPEC_PATH)


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
        out.append(slice_from_dict(fields))
    return out


def _label(value: Any) -> str:
    if value is None:
        return "inf"
    if isinstance(value, (list, tuple)):
        return "_".join(_label(v) for v in value)
    if isinstance(value, float):
        return "inf" if value == math.inf else f"{value:g}"
    return str(value)


def _weight_from_yaml(name: str, value: Any) -> DebiasedScore:
    if isinstance(value, DebiasedScore):
        return value
    if not isinstance(value, Mapping) or set(value) != {"debiased_score"} or not isinstance(value["debiased_score"], Mapping):
        raise SpecError(f"slice {name!r}: weight must be {{debiased_score: {{gamma: ..., s0: ...}}}}, got {value!r}")
    params = dict(value["debiased_score"])
    if set(params) != {"gamma", "s0"}:
        raise SpecError(f"slice {name!r}: weight.debiased_score needs exactly gamma and s0, got {sorted(params)}")
    return DebiasedScore(**params)
