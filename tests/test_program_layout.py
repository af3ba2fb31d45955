"""The slice program layout has one definition, :mod:`dv365_ops.program`; these tests guard its mirrors.

The C++ and CUDA kernels cannot import Python, so ``csrc/dv365_prog.h`` restates the layout: every constant it
defines must equal its program.py counterpart, every program.py constant must be there, no other C++/CUDA file
may define a second copy, and none may spell a mirrored constant as its literal meaning (the float rows as
``floats[e]`` / ``floats + n``, the union of the flags, the categorical range). The Triton kernels read
program.py itself: their source must hold no literal offsets or flag bits.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from dv365_ops import program as P

ROOT = pathlib.Path(__file__).parents[1]
HEADER = ROOT / "csrc" / "dv365_prog.h"
TRITON_SLICING = ROOT / "dv365_ops" / "triton_kernels" / "slicing.py"

# `kName = value` in an enum or a constexpr; values are integer or floating literals
_CONST = re.compile(r"\b(k[A-Z]\w*)\s*=\s*([-+]?[0-9][0-9.eE+-]*)\s*[,;]")


def _snake(header_name: str) -> str:
    """``kCatField0`` -> ``CAT_FIELD0``, ``kS0`` -> ``S0``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", header_name[1:]).upper()


def _python_value(header_name: str):
    """The program.py value a header constant mirrors (tuples such as ``CAT_FIELD`` are indexed by the digit)."""
    name = _snake(header_name)
    if hasattr(P, name):
        return name, getattr(P, name)
    m = re.fullmatch(r"(\w+?)(\d+)", name)
    if m and isinstance(getattr(P, m[1], None), tuple):
        return f"{m[1]}[{m[2]}]", getattr(P, m[1])[int(m[2])]
    return name, None


def _header_constants(text: str) -> dict[str, int | float]:
    found: dict[str, int | float] = {}
    for name, literal in _CONST.findall(text):
        assert name not in found, f"{HEADER.name} defines {name} twice"
        # integers compare exactly (a float would not tell 2**63 - 1 from 2**63 - 512)
        found[name] = int(literal) if re.fullmatch(r"[-+]?[0-9]+", literal) else float(literal)
    return found


def _layout_names() -> set[str]:
    return {n for n in vars(P) if n.isupper() and not n.startswith("_")}


def test_header_constants_equal_program_py():
    consts = _header_constants(HEADER.read_text())
    assert len(consts) >= 20, f"parsed only {sorted(consts)} from {HEADER}: has its syntax changed?"
    mismatched = {}
    for name, value in consts.items():
        py_name, py_value = _python_value(name)
        assert py_value is not None, f"{HEADER.name} defines {name}, which has no program.py counterpart {py_name}"
        if py_value != value or isinstance(py_value, float) != isinstance(value, float):
            mismatched[name] = (value, f"program.py {py_name} = {py_value!r}")
    assert not mismatched, f"{HEADER.name} disagrees with program.py: {mismatched}"


def test_every_program_py_constant_is_mirrored():
    mirrored: set[str] = set()
    for name in _header_constants(HEADER.read_text()):
        mirrored.add(re.sub(r"\[\d+\]$", "", _python_value(name)[0]))
    missing = _layout_names() - mirrored
    assert not missing, f"program.py constants {sorted(missing)} have no mirror in {HEADER.name}"


def test_tuple_constants_have_one_entry_per_filter():
    assert len(P.CAT_FIELD) == len(P.CAT_MASK) == P.NUM_CAT_FILTERS
    ints = [P.TABLE, *P.CAT_FIELD, *P.CAT_MASK, P.WIN_LO, P.WIN_HI, P.FLAGS]
    assert sorted(ints) == list(range(P.NUM_INT)), "prog_i columns must be 0..NUM_INT-1, each once"
    floats = [P.DWELL_LO, P.DWELL_HI, P.RATIO_LO, P.RATIO_HI, P.BETA, P.GAMMA, P.S0]
    assert sorted(floats) == list(range(P.NUM_FLOAT)), "prog_f columns must be 0..NUM_FLOAT-1, each once"
    assert P.ALL_FLAGS == P.WEIGHTED | P.DWELL_FILTER | P.RATIO_FILTER
    assert {P.WEIGHTED, P.DWELL_FILTER, P.RATIO_FILTER} == {1, 2, 4}


def test_the_parser_catches_a_drift():
    # the guard itself: a header with one value changed must fail the comparison
    text = HEADER.read_text()
    drifted = re.sub(r"\bkWinHi\s*=\s*\d+", f"kWinHi = {P.WIN_HI + 1}", text)
    assert drifted != text
    consts = _header_constants(drifted)
    assert consts["kWinHi"] != _python_value("kWinHi")[1]
    assert _header_constants(text)["kMaxScore"] == P.MAX_SCORE
    off_by_one = re.sub(r"\bkNoUpperBound\s*=\s*\d+", f"kNoUpperBound = {P.NO_UPPER_BOUND - 1}", text)
    assert off_by_one != text
    assert _header_constants(off_by_one)["kNoUpperBound"] != P.NO_UPPER_BOUND


def test_no_other_native_file_redefines_the_layout():
    names = set(_header_constants(HEADER.read_text()))
    offenders = []
    for path in sorted((ROOT / "csrc").rglob("*")):
        if path == HEADER or path.suffix not in (".h", ".cuh", ".cu", ".cpp", ".inc"):
            continue
        for name, _ in _CONST.findall(path.read_text()):
            if name in names:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, f"the program layout is defined again outside {HEADER.name}: {offenders}"


# The meanings of mirrored constants, as C++/CUDA code would spell them without the mirror.
NATIVE_LITERALS = {
    "FLOAT_DURATION / FLOAT_DWELL (a float row by its number)": r"\bfloats\s*\[\s*(?:\w+\.)?(?:[ei]\s*\]|n\s*\+)|\bfloats\s*\+\s*(?:\w+\.)?[nN]\b|\bdur\s*\+\s*(?:\w+\.)?[nN]\b",
    "ALL_FLAGS (the union of the flags)": r"kWeighted\s*\|\s*(?:prog::)?kDwellFilter|kDwellFilter\s*\|\s*(?:prog::)?kRatioFilter",
    "MAX_CAT_VALUE (in a message)": r'"[^"\n]*\[0, 6[34]\)?\][^"\n]*"',
    "NO_UPPER_BOUND (a window bound)": r"(?i:win_?hi)[^;\n]*(?:INT64_MAX|numeric_limits<int64_t>::max)",
}

# Sites that remain, each in code another change is rewriting (the CPU slicing timeline checks); an entry whose
# site is gone must be removed, so the list cannot go stale.
NATIVE_LITERALS_PENDING = {
    ("csrc/cpu/slicing.cpp", "FLOAT_DURATION / FLOAT_DWELL (a float row by its number)"),
}


def _native_sources():
    for path in sorted((ROOT / "csrc").rglob("*")):
        if path != HEADER and path.suffix in (".h", ".cuh", ".cu", ".cpp", ".inc"):
            yield path.relative_to(ROOT).as_posix(), path.read_text()


def test_native_code_spells_no_mirrored_constant_as_a_literal():
    hits, seen_pending = [], set()
    for rel, text in _native_sources():
        code = re.sub(r"//[^\n]*", "", text)  # comments may explain a value
        for meaning, pattern in NATIVE_LITERALS.items():
            found = [m.group(0) for m in re.finditer(pattern, code)]
            if not found:
                continue
            if (rel, meaning) in NATIVE_LITERALS_PENDING:
                seen_pending.add((rel, meaning))
            else:
                hits.append(f"{rel}: {meaning}: {found}")
    assert not hits, f"spell these with the {HEADER.name} constants: {hits}"
    stale = NATIVE_LITERALS_PENDING - seen_pending
    assert not stale, f"NATIVE_LITERALS_PENDING entries whose sites are gone (remove them): {sorted(stale)}"


@pytest.mark.parametrize("meaning, spelled", [
    ("FLOAT_DURATION / FLOAT_DWELL (a float row by its number)", "x = tl.floats[tl.n + e];"),
    ("FLOAT_DURATION / FLOAT_DWELL (a float row by its number)", "x = tl.floats[e];"),
    ("FLOAT_DURATION / FLOAT_DWELL (a float row by its number)", "tl.dwell = tl.dur + tl.N;"),
    ("ALL_FLAGS (the union of the flags)", "f & (prog::kWeighted | prog::kDwellFilter | prog::kRatioFilter)"),
    ("MAX_CAT_VALUE (in a message)", 'what += "cats values must lie in [0, 63]; ";'),
    ("NO_UPPER_BOUND (a window bound)", "win_hi[s] = std::numeric_limits<int64_t>::max();"),
])
def test_the_literal_guard_catches_each_spelling(meaning, spelled):
    assert re.search(NATIVE_LITERALS[meaning], spelled)


@pytest.mark.parametrize(
    "pattern",
    [
        r"\bp[if]\s*\+\s*\d",  # a column offset into a program row
        r"\bs\s*\*\s*\d",  # a row stride
        r"\bf(?:lags)?\s*&\s*\d",  # a flag bit
        r"65536",  # MAX_SCORE
    ],
)
def test_triton_kernels_hold_no_layout_literals(pattern):
    source = TRITON_SLICING.read_text()
    hits = [line.strip() for line in source.splitlines() if re.search(pattern, line)]
    assert not hits, f"{TRITON_SLICING.name} spells the program layout as literals (read it from program.py): {hits}"


def test_triton_constants_come_from_program_py():
    from dv365_ops.triton_kernels import slicing as TS

    for name in ("NUM_INT", "NUM_FLOAT", "WIN_LO", "WIN_HI", "FLAGS", "DWELL_LO", "DWELL_HI", "RATIO_LO", "RATIO_HI",
                 "BETA", "GAMMA", "S0", "WEIGHTED", "DWELL_FILTER", "RATIO_FILTER", "ALL_FLAGS", "MAX_SCORE",
                 "FLOAT_DURATION", "FLOAT_DWELL"):
        assert getattr(TS, f"_{name}").value == getattr(P, name), name
    for j in range(P.NUM_CAT_FILTERS):
        assert getattr(TS, f"_CAT_FIELD{j}").value == P.CAT_FIELD[j]
        assert getattr(TS, f"_CAT_MASK{j}").value == P.CAT_MASK[j]


# ---- the plan's layout (program.py, plan section)

_PLAN_COUNTS = ("PLAN_NUM_SLICES", "PLAN_NUM_TABLES", "PLAN_NUM_GROUPS", "PLAN_NUM_BOUNDS", "PLAN_NUM_CAT_FIELDS",
                "PLAN_NUM_WEIGHTED", "PLAN_NUM_BETAS", "PLAN_NUM_GAMMAS", "PLAN_WORDS")
# plan_i's sections in the order the builder writes them (each starts where the previous ends)
_PLAN_SECTIONS = ("PLAN_SLICE_GROUP_AT", "PLAN_GROUPS_AT", "PLAN_GROUP_SLICES_AT", "PLAN_TABLE_GROUPS_AT",
                  "PLAN_TABLE_SLICES_AT", "PLAN_BOUNDS_AT", "PLAN_COVERED_AT", "PLAN_CAT_FIELDS_AT",
                  "PLAN_CAT_PASS_AT", "PLAN_FLOAT_GROUPS_AT")


def test_plan_header_entries_are_distinct_and_inside_the_header():
    entries = [getattr(P, n) for n in _PLAN_COUNTS + _PLAN_SECTIONS + ("PLAN_BETAS_AT", "PLAN_GAMMAS_AT")]
    assert len(set(entries)) == len(entries), "two plan header entries share a slot"
    assert all(0 <= e < P.PLAN_HEADER for e in entries)
    cols = [P.GROUP_TABLE, P.GROUP_LEADER, P.GROUP_FLAGS, P.GROUP_RANK, P.GROUP_WSLOT, P.GROUP_BETA, P.GROUP_GAMMA,
            P.GROUP_FIRST, P.GROUP_COUNT]
    assert sorted(cols) == list(range(P.GROUP_COLS)), "group columns must be 0..GROUP_COLS-1, each once"
    assert P.PLAN_CAT_VALUES == P.MAX_CAT_VALUE + 1


def test_plan_sections_tile_the_plan():
    import torch

    import dv365_ops  # noqa: F401  (the ops)
    from dv365_ops.testing import random_program

    prog_i, prog_f = random_program(70, num_tables=3, cat_cardinality=(7, 3, 4), with_floats=True)
    plan_i, plan_f = torch.ops.dv365.plan_slices(prog_i, prog_f, 3, 3, 2)
    h = plan_i[: P.PLAN_HEADER].tolist()
    assert h[P.PLAN_NUM_SLICES] == 70 and h[P.PLAN_NUM_TABLES] == 3
    sec = P.plan_sections(plan_i, plan_f)
    sizes = [sec[n].numel() for n in ("slice_group", "groups", "group_slices", "table_groups", "table_slices",
                                      "bounds", "covered", "cat_fields", "cat_pass", "float_groups")]
    starts = [h[getattr(P, n)] for n in _PLAN_SECTIONS]
    assert starts[0] == P.PLAN_HEADER
    for a, b, n in zip(starts, starts[1:] + [plan_i.numel()], sizes):
        assert b - a == n, "a section's length disagrees with its header counts"
    assert h[P.PLAN_BETAS_AT] == 0 and h[P.PLAN_GAMMAS_AT] == h[P.PLAN_NUM_BETAS]
    assert plan_f.numel() == h[P.PLAN_NUM_BETAS] + h[P.PLAN_NUM_GAMMAS]
