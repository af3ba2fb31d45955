"""``dv365 spec show`` and ``dv365 spec validate``: read a slice spec (docs/design.md#slices) as a table.

The spec modules import torch, so they are imported when a command runs, not when ``dv365 --help`` is built."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .cli import lazy_arguments

if TYPE_CHECKING:
    from .spec import Slice, SliceSpec

_SHORT = {"action_types": "action", "media_types": "media", "surfaces": "surface"}


def describe_filters(s: Slice) -> str:
    """The slice's filters, e.g. ``action∈{like,save} dwell∈[15, inf] ratio(β=0.5)∈[0, 1]``."""
    from .spec import SET_FILTERS

    parts = []
    for field, (_, vocab) in SET_FILTERS.items():
        names = getattr(s, field)
        if names is not None:
            parts.append(f"{_SHORT[field]}∈{{{','.join(n for n in vocab if n in names)}}}")
    if s.dwell is not None:
        parts.append(f"dwell∈{s.dwell}")
    if s.watch_ratio is not None:
        beta = "" if s.beta == 1.0 else f"(β={s.beta:g})"
        parts.append(f"ratio{beta}∈{s.watch_ratio}")
    return " ".join(parts) or "-"


def format_spec(spec: SliceSpec, timeline: str | None = None) -> str:
    """Aligned table of the slices (index in the spec, name, timeline, id field, table, filters, window
    ``(gap, T_ub]``, weight), then one line per table."""
    from .spec import format_duration
    from .timeline import KINDS

    rows = [("#", "name", "timeline", "id field", "table", "filters", "window", "weight")]
    for i, s in enumerate(spec.slices):
        if timeline and s.timeline != timeline:
            continue
        weight = "1" if s.weight is None else f"debiased(γ={s.weight.gamma:g}, s0={s.weight.s0:g})"
        window = f"({format_duration(s.gap) if s.gap else 0}, {format_duration(s.window)}]"
        rows.append((str(i), s.name, s.timeline, s.id_field, s.table, describe_filters(s), window, weight))
    lines = _align(rows)
    counts = {k: len(spec.timeline_slices(k)) for k in KINDS}
    lines.append("")
    lines.append(
        f"{len(spec)} slices ({', '.join(f'{n} {k}' for k, n in counts.items())}), {len(spec.tables)} tables, dim {spec.dim}"
    )
    lines.append("")
    table_rows = [("table", "id field", "rows", "slices", "group")]
    for t in spec.tables:
        used = [s for s in spec.slices if s.table == t.name]
        table_rows.append((t.name, t.id_field, "-" if t.num_rows is None else str(t.num_rows), str(len(used)), t.group or "-"))
    lines.extend(_align(table_rows))
    return "\n".join(lines)


def _align(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def _load(path: str | None) -> SliceSpec:
    from .spec import SliceSpec, load_default_spec

    return load_default_spec() if path is None else SliceSpec.from_yaml(path)


def _show(args: argparse.Namespace) -> int:
    spec = _load(args.spec)
    if args.yaml:
        if args.timeline:
            raise ValueError("--yaml prints the whole spec (a spec needs its tables and both timelines); "
                             "drop --timeline")
        # the starting point of a custom spec: delete or edit entries, then `dv365 spec validate FILE` and
        # `spec: FILE` in the training config
        print(f"# {'the default dv365 slice spec' if args.spec is None else args.spec}, one entry per slice "
              "(dv365 spec show --yaml); docs/design.md#slices")
        print(spec.to_yaml(), end="")
        return 0
    print(format_spec(spec, args.timeline))
    return 0


def _validate(args: argparse.Namespace) -> int:
    """Exit 1 with ``FILE: message`` for an invalid spec (a result, like a linter's), 0 when it compiles."""
    from .spec import SpecError
    from .timeline import KINDS

    try:
        spec = _load(args.file)
        spec.compile()
    except (SpecError, OSError) as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{len(spec.timeline_slices(k))} {k}" for k in KINDS)
    print(f"{args.file}: OK, {len(spec)} slices ({counts}), {len(spec.tables)} tables")
    return 0


def _timeline_flag(p: argparse.ArgumentParser) -> None:
    from .timeline import KINDS

    p.add_argument("--timeline", choices=KINDS, help="only the slices of one timeline")


def register(sub) -> None:
    parser = sub.add_parser("spec", help="show or validate a slice spec")
    spec_sub = parser.add_subparsers(dest="spec_command", required=True, metavar="ACTION")
    show = spec_sub.add_parser("show", help="print a slice spec as a table (default: the packaged default spec)")
    show.add_argument("--spec", metavar="FILE", help="a YAML slice spec (default: the packaged default spec)")
    show.add_argument("--yaml", action="store_true",
                      help="print the spec as YAML, one entry per slice: the file to edit into a custom spec")
    lazy_arguments(show, _timeline_flag)
    show.set_defaults(func=_show)
    validate = spec_sub.add_parser("validate", help="check a YAML slice spec and compile it (exit 1 when invalid)")
    validate.add_argument("file", metavar="FILE", help="a YAML slice spec")
    validate.set_defaults(func=_validate)
