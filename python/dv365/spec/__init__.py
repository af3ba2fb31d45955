"""Declarative multi-slicing (paper section 2.2, eq. 2-6; docs/design.md#slices).

A :class:`SliceSpec` lists the ≈200 sliced features of a DV365 model: each :class:`Slice` names a timeline,
the id field it pools, the embedding :class:`Table` it pools from, and ANDed filters (action / media type /
surface sets, a dwell-time range (eq. 3), a watch-ratio range with exponent β (eq. 4), a time window
``Δt ∈ (gap, T_ub]`` (eq. 6)) and optionally the debiased watch-score weight (eq. 5). :meth:`SliceSpec.compile`
turns it into one slice program per timeline (layout: :mod:`dv365_ops.program`) that the slicing ops evaluate.

Specs are written in Python or YAML; YAML also has a compact family syntax (a ``product:`` block) so that
"action × window" is one entry. The default spec ships as ``dv365/specs/default.yaml``
(:func:`load_default_spec`).

The package has three parts: :mod:`.model` (the classes and the checks of their values, durations included),
:mod:`.yaml_io` (the YAML form, families, the default spec) and :mod:`.compiler` (slice programs).
"""

# also importable from here, outside __all__ as before: SET_FILTERS, IMPLICIT_ONLY, EXPLICIT_ONLY, DEFAULT_SPEC_PATH
from .compiler import CompiledProgram
from .model import (
    DAY,
    EXPLICIT_ONLY,
    HOUR,
    IMPLICIT_ONLY,
    SET_FILTERS,
    DebiasedScore,
    Range,
    Slice,
    SliceSpec,
    SpecError,
    Table,
    format_duration,
    parse_duration,
)
from .yaml_io import DEFAULT_SPEC_PATH, expand_family, load_default_spec

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
