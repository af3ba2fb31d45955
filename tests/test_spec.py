"""SliceSpec: validation, YAML round trip and family syntax, the compiler against a naive oracle, the
default spec, and the ``dv365 spec`` commands (paper section 2.2; docs/design.md#slices)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from timeline_data import naive_slices, random_batch, random_request_ts, random_spec
from tolerances import assert_close

from dv365 import cli
import math

from dv365.spec import DAY, DebiasedScore, Range, Slice, SliceSpec, SpecError, Table, load_default_spec
from dv365.timeline import ACTION_TYPES, MEDIA_TYPES, SURFACES
from dv365_ops import program as P
from dv365_ops import reference

TABLES = (
    Table("em", "media_id"),
    Table("ea", "author_id"),
    Table("im", "media_id"),
    Table("it", "topic_id"),
)


def _spec(*slices: Slice, tables=TABLES) -> SliceSpec:
    return SliceSpec(slices=slices, tables=tables, dim=8)


def _exp(name="x", **kw) -> Slice:
    return Slice(name=name, timeline="explicit", id_field=kw.pop("id_field", "media_id"), table=kw.pop("table", "em"), **kw)


def _imp(name="y", **kw) -> Slice:
    return Slice(name=name, timeline="implicit", id_field=kw.pop("id_field", "media_id"), table=kw.pop("table", "im"), **kw)


# validation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: _exp(action_types={"like", "poke"}), r"slice 'x': action_types has unknown names \['poke'\]"),
        (lambda: _exp(surfaces={"tv"}), r"slice 'x': surfaces has unknown names \['tv'\]"),
        (lambda: _exp(media_types=set()), r"slice 'x': media_types is empty"),
        (lambda: _imp(dwell=(15, 3)), r"slice 'y': dwell is an empty range: lo 15 > hi 3"),
        (lambda: _imp(watch_ratio=(1.0, 0.5)), r"slice 'y': watch_ratio is an empty range"),
        (lambda: _imp(dwell=(0, float("nan"))), r"slice 'y': dwell bounds must not be NaN"),
        (lambda: _imp(watch_ratio=(0, 1), beta=0), r"slice 'y': beta must be a finite number > 0"),
        (lambda: _imp(watch_ratio=(0, 1), beta=-0.5), r"slice 'y': beta must be a finite number > 0"),
        (lambda: _imp(beta=0.5), r"slice 'y': beta only applies to a watch_ratio filter"),
        (lambda: _imp(weight=DebiasedScore(0.0, 0.5)), r"slice 'y': weight.gamma must be a finite number > 0"),
        (lambda: _imp(weight=DebiasedScore(1.0, float("inf"))), r"slice 'y': weight.s0 must be finite"),
        (lambda: _exp(dwell=(0, 3)), r"slice 'x': dwell is not available on the explicit timeline"),
        (lambda: _exp(watch_ratio=(0, 1)), r"slice 'x': watch_ratio is not available on the explicit timeline"),
        (lambda: _exp(weight=DebiasedScore(1.0, 0.5)), r"slice 'x': weight is not available on the explicit timeline"),
        (lambda: _imp(action_types={"like"}), r"slice 'y': action_types is not available on the implicit timeline"),
        (lambda: _exp(window="1d", gap="1d"), r"slice 'x': window \(1d\) must be greater than gap \(1d\)"),
        (lambda: _exp(window=3600, gap=7200), r"slice 'x': window \(1h\) must be greater than gap \(2h\)"),
        (lambda: _exp(window="3 weeks"), r"slice 'x': window must be a duration"),
        (lambda: _exp(gap="inf"), r"slice 'x': gap must be a finite duration"),
        (lambda: _exp(gap=-1), r"slice 'x': gap must be >= 0 seconds"),
        (lambda: Slice("z", "timeless", "media_id", "em"), r"slice 'z': timeline must be one of"),
        (lambda: Slice("z", "explicit", "song_id", "em"), r"slice 'z': id_field must be one of"),
        (lambda: _spec(_exp(table="nope")), r"slice 'x': table 'nope' does not exist"),
        (lambda: _spec(_exp(id_field="author_id")), r"slice 'x': id_field 'author_id' does not match table 'em'"),
        (lambda: _spec(_exp("a"), _imp("a")), r"slice 'a': duplicate slice name"),
        (lambda: _spec(_exp(), tables=(*TABLES, Table("em", "media_id"))), r"table 'em': duplicate table name"),
        (lambda: Table("t", "video_id"), r"table 't': id_field must be one of"),
        (lambda: Table("t", "media_id", num_rows=0), r"table 't': num_rows must be a positive integer"),
        (lambda: SliceSpec(slices=(), tables=TABLES), r"spec: needs at least one slice"),
        (lambda: SliceSpec(slices=(_exp(),), tables=TABLES, dim=0), r"spec: dim must be a positive integer"),
    ],
)
def test_validation_errors(make, message):
    with pytest.raises(SpecError, match=message):
        make()


@pytest.mark.parametrize(
    "text, message",
    [
        ("dim: 8\ntables: {em: {id_field: media_id}}\nslices:\n- {name: a, timeline: explicit, id_field: media_id, table: em, colour: red}",
         r"slice 'a': unknown field\(s\) \['colour'\]"),
        ("dim: 8\ntables: {em: {id_field: media_id}}\nslices:\n- {name: a, timeline: explicit, table: em}",
         r"slice 'a': missing field\(s\) \['id_field'\]"),
        ("dim: 8\ntables: {em: {id_field: media_id, rows: 5}}\nslices: []",
         r"table 'em': unknown field\(s\) \['rows'\]"),
        ("dim: 8\nbatch: 3\ntables: {}\nslices: []", r"spec: unknown top-level field\(s\) \['batch'\]"),
        ("dim: 8\ntables: {im: {id_field: media_id}}\nslices:\n- {name: a, timeline: implicit, id_field: media_id, table: im, "
         "weight: {gamma: 1}}", r"slice 'a': weight must be \{debiased_score"),
        ("dim: 8\ntables: {em: {id_field: media_id}}\nslices:\n- name: 'e_{action_types}'\n  timeline: explicit\n"
         "  id_field: media_id\n  table: em\n  product: {action_types: [like, wave]}",
         r"slice 'e_wave': action_types has unknown names \['wave'\]"),
        ("dim: 8\ntables: {em: {id_field: media_id}}\nslices:\n- name: 'e_{window}'\n  timeline: explicit\n"
         "  id_field: media_id\n  table: em\n  product: {windows: [3d]}",
         r"family 'e_\{window\}': product has unknown field 'windows'"),
        ("dim: 8\ntables: {em: {id_field: media_id}}\nslices:\n- name: 'e'\n  timeline: explicit\n"
         "  id_field: media_id\n  table: em\n  product: {window: [3d, 7d]}",
         r"slice 'e': duplicate slice name"),
        ("dim: [8", r"spec: invalid YAML"),
    ],
)
def test_yaml_validation_errors(text, message):
    with pytest.raises(SpecError, match=message):
        SliceSpec.from_yaml(text)


def test_normalization():
    s = _imp(media_types=["video", "photo"], dwell=[3, "inf"], window="3d", gap="24h", watch_ratio=(0, 1), beta=0.5)
    assert s.media_types == frozenset({"video", "photo"})
    assert s.dwell == (3.0, float("inf"))
    assert s.window == 3 * DAY and s.gap == DAY
    assert _exp(action_types="like").action_types == frozenset({"like"})
    assert _exp(window=None).window is None and _exp(window="inf").window is None


# YAML ---------------------------------------------------------------------------------------------
def test_yaml_round_trip_random_specs():
    for _ in range(5):
        spec = random_spec(40)
        text = spec.to_yaml()
        again = SliceSpec.from_yaml(text)
        assert again == spec
        assert again.to_yaml() == text


def test_yaml_round_trip_default_spec(tmp_path):
    spec = load_default_spec()
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    assert SliceSpec.from_yaml(path) == spec
    assert SliceSpec.from_yaml(str(path)) == spec


def test_family_expands_in_product_order():
    text = """
dim: 4
tables: {im: {id_field: media_id}}
slices:
  - name: "d_{dwell}_{window}"
    timeline: implicit
    id_field: media_id
    table: im
    surfaces: [reels]
    product:
      dwell: {neg: [0, 3], pos: [15, .inf]}
      window: [3d, inf]
  - {name: tail, timeline: implicit, id_field: media_id, table: im}
"""
    spec = SliceSpec.from_yaml(text)
    assert spec.names == ("d_neg_3d", "d_neg_inf", "d_pos_3d", "d_pos_inf", "tail")
    assert spec.slices[2] == Slice("d_pos_3d", "implicit", "media_id", "im", surfaces={"reels"}, dwell=(15, float("inf")), window=3 * DAY)
    assert spec.slices[1].window is None and spec.slices[4].window is None


def test_family_variant_axis_sets_several_fields():
    text = """
dim: 4
tables: {neg: {id_field: author_id}, pos: {id_field: author_id}}
slices:
  - name: "a_{bucket}_{window}"
    timeline: implicit
    id_field: author_id
    product:
      bucket:
        lt3: {dwell: [0, 3], table: neg}
        ge15: {dwell: [15, .inf], table: pos, media_types: [video]}
      window: [7d, inf]
"""
    spec = SliceSpec.from_yaml(text)
    assert spec.names == ("a_lt3_7d", "a_lt3_inf", "a_ge15_7d", "a_ge15_inf")
    assert [s.table for s in spec.slices] == ["neg", "neg", "pos", "pos"]
    assert spec.slices[3] == Slice("a_ge15_inf", "implicit", "author_id", "pos", media_types={"video"}, dwell=(15, float("inf")))
    bad_field = text.replace("table: pos,", "tabel: pos,")
    with pytest.raises(SpecError, match=r"product.bucket.ge15 has unknown field\(s\) \['tabel'\]"):
        SliceSpec.from_yaml(bad_field)
    clash = text.replace("id_field: author_id\n    product", "id_field: author_id\n    table: neg\n    product")
    with pytest.raises(SpecError, match=r"field\(s\) \['table'\] set twice"):
        SliceSpec.from_yaml(clash)


# compiler -----------------------------------------------------------------------------------------
def _check_compiled_against_oracle(spec: SliceSpec, lengths: list[int]) -> None:
    request_ts = random_request_ts(len(lengths))
    batches = {kind: random_batch(kind, lengths, request_ts) for kind in ("explicit", "implicit")}
    expected = naive_slices(spec, batches, request_ts)
    seen = set()
    for kind, prog in spec.compile().items():
        batch = batches[kind]
        assert prog.prog_i.shape == (prog.num_slices, P.NUM_INT) and prog.prog_i.dtype == torch.int64
        assert prog.prog_f.shape == (prog.num_slices, P.NUM_FLOAT) and prog.prog_f.dtype == torch.float64
        values, weights, lengths_out = reference.slice_timeline(
            prog.ids(batch), batch.offsets, batch.ts, batch.cats, batch.floats, request_ts, prog.prog_i, prog.prog_f
        )
        lengths_out = lengths_out.reshape(prog.num_slices, batch.num_users)
        start = 0
        for row, pos in enumerate(prog.slice_index.tolist()):
            assert spec.slices[pos].name == prog.slice_names[row]
            assert prog.tables[int(prog.prog_i[row, P.TABLE])] == spec.slices[pos].table
            seen.add(pos)
            for b in range(batch.num_users):
                n = int(lengths_out[row, b])
                want = expected[pos][b]
                assert [i for i, _ in want] == values[start : start + n].tolist(), (spec.slices[pos], b)
                assert_close(weights[start : start + n], torch.tensor([w for _, w in want], dtype=torch.float32))
                start += n
        assert start == values.numel()
    assert seen == set(range(len(spec)))


def test_compile_matches_naive_oracle_random_specs():
    for _ in range(3):
        _check_compiled_against_oracle(random_spec(30), [0, 37, 1, 64])


def test_compile_matches_naive_oracle_default_spec():
    _check_compiled_against_oracle(load_default_spec(), [23, 0, 41])


def test_compile_layout():
    spec = _spec(
        _imp("a", surfaces={"feed", "reels"}, media_types={"carousel"}, dwell=(15, float("inf")), window="7d", gap="1d"),
        _exp("b", action_types={"save"}),
        _imp("c", table="it", id_field="topic_id", watch_ratio=(0.5, 1.0), beta=0.5, weight=DebiasedScore(2.0, 0.25)),
    )
    programs = spec.compile()
    imp, exp = programs["implicit"], programs["explicit"]
    assert imp.tables == ("im", "it") and imp.id_fields == ("media_id", "topic_id")
    assert imp.slice_index.tolist() == [0, 2] and exp.slice_index.tolist() == [1]
    a, c = imp.prog_i.tolist()
    # implicit cats are (media_type, surface): media_types is filter 0 on column 0, surfaces filter 1 on column 1
    assert a[P.CAT_FIELD[0]] == 0 and a[P.CAT_MASK[0]] == 1 << MEDIA_TYPES.index("carousel")
    assert a[P.CAT_FIELD[1]] == 1 and a[P.CAT_MASK[1]] == (1 << SURFACES.index("reels")) | (1 << SURFACES.index("feed"))
    assert a[P.CAT_FIELD[2]] == -1
    assert (a[P.WIN_LO], a[P.WIN_HI], a[P.FLAGS]) == (DAY, 7 * DAY, P.DWELL_FILTER)
    assert (c[P.TABLE], c[P.WIN_LO], c[P.WIN_HI], c[P.FLAGS]) == (1, 0, P.NO_UPPER_BOUND, P.RATIO_FILTER | P.WEIGHTED)
    cf = imp.prog_f[1].tolist()
    assert (cf[P.RATIO_LO], cf[P.RATIO_HI], cf[P.BETA], cf[P.GAMMA], cf[P.S0]) == (0.5, 1.0, 0.5, 2.0, 0.25)
    b = exp.prog_i[0].tolist()
    # explicit cats are (action_type, media_type, surface)
    assert b[P.CAT_FIELD[0]] == 0 and b[P.CAT_MASK[0]] == 1 << ACTION_TYPES.index("save")
    assert spec.compile() is programs


# the default spec -------------------------------------------------------------------------------
def test_default_spec_covers_the_paper_families():
    spec = load_default_spec()
    assert 180 <= len(spec) <= 220
    exp, imp = spec.timeline_slices("explicit"), spec.timeline_slices("implicit")
    windows = {3 * DAY, 7 * DAY, None}
    for action in ACTION_TYPES:
        assert {s.window for s in exp if s.action_types == {action} and s.media_types is None and s.gap == 0} == windows
    assert {m for s in exp if s.media_types and s.action_types for m in s.media_types} >= {"video", "photo"}
    assert {s.window for s in exp if s.media_types and s.action_types} == windows
    dwell = [s for s in imp if s.dwell and not s.media_types and not s.surfaces and s.gap == 0]
    assert any(s.dwell[0] >= 15 for s in dwell) and any(s.dwell[1] <= 3 for s in dwell)
    assert {s.window for s in dwell} == windows
    ratio = [s for s in imp if s.watch_ratio]
    assert {s.beta for s in ratio} == {1.0, 0.5} and {s.window for s in ratio} == windows
    weighted = [s for s in imp if s.weighted]
    assert {s.window for s in weighted} == windows and {s.id_field for s in weighted} == {"media_id", "author_id", "topic_id"}
    assert not any(s.weighted for s in exp)
    for timeline in (exp, imp):
        assert {s.id_field for s in timeline} == {"media_id", "author_id", "topic_id"}
        everything = [s for s in timeline if not (s.action_types or s.media_types or s.surfaces or s.dwell or s.watch_ratio or s.weight)]
        assert {s.window for s in everything} == windows
    # distant interest beyond the loader's 24 h cut (a gap of 1 d or less would equal its gap-0 twin)
    assert any(s.gap == 7 * DAY for s in exp) and any(s.gap == 7 * DAY for s in imp)
    assert not any(0 < s.gap <= DAY for s in spec.slices)
    # tables are shared by group: weighted and unweighted, positive and negative, explicit and implicit never mix
    by_table = {t.name: [s for s in spec.slices if s.table == t.name] for t in spec.tables}
    for name, slices in by_table.items():
        assert slices, name
        assert len({s.timeline for s in slices}) == 1 and len({s.weighted for s in slices}) == 1, name
    neg = {s.table for s in imp if s.dwell == Range(0, 3, hi_open=True)} - {"imp_media", "imp_topic"}
    pos = {s.table for s in imp if s.dwell == Range(15, math.inf, lo_open=True)} - {"imp_media", "imp_topic"}
    assert neg and pos and not neg & pos


def _bucket_of(spec: SliceSpec, family: str, dwell: list[float], duration: list[float]) -> list[list[str]]:
    """For each event (all at Δt = 2 d), the labels of the default slices ``family.format(label)`` that keep it."""
    prog = spec.compile()["implicit"]
    n = len(dwell)
    floats = torch.tensor([duration, dwell], dtype=torch.float32)
    req = torch.tensor([10 * DAY])
    keep, _ = reference.slice_membership(torch.tensor([0, n]), torch.full((n,), 8 * DAY), torch.zeros(2, n, dtype=torch.int8),
                                         floats, req, prog.prog_i, prog.prog_f)
    rows = {name: r for r, name in enumerate(prog.slice_names)}
    labels = [lab for lab in ("0to3", "3to15", "gt15", "0to20", "50to100", "ge100") if family.format(lab) in rows]
    return [[lab for lab in labels if keep[rows[family.format(lab)], e]] for e in range(n)]


def test_default_buckets_are_half_open():
    # the paper's "< 3 s" and "> 15 s": an event exactly on a bound lands in one bucket, as does a ratio of 1.0
    spec = load_default_spec()
    def f32_step(x: float, toward: float) -> float:  # dwell is float32: its neighbours are float32 steps
        return float(torch.nextafter(torch.tensor(x), torch.tensor(toward)))

    dwell = [0.0, f32_step(3.0, 0.0), 3.0, 15.0, f32_step(15.0, 99.0), 60.0]
    got = _bucket_of(spec, "imp_dwell_{}_media_inf", dwell, [10.0] * len(dwell))
    assert got == [["0to3"], ["0to3"], ["3to15"], ["3to15"], ["gt15"], ["gt15"]]
    got = _bucket_of(spec, "imp_ratio_{}_media_inf", [0.0, 1.0, 10.0, 20.0, 5.0], [10.0, 10.0, 10.0, 10.0, 0.0])
    # ratios 0, 0.1, 1.0, 2.0; a photo (duration 0) has no watch ratio
    assert got == [["0to20"], ["0to20"], ["ge100"], ["ge100"], []]


def test_open_bounds_compile_to_the_adjacent_float64():
    s = _imp(dwell="(3, 15)", watch_ratio="[0.5, 1.0)")
    assert s.dwell == Range(3.0, 15.0, lo_open=True, hi_open=True) and s.dwell != (3.0, 15.0)
    assert str(s.dwell) == "(3, 15)" and str(s.watch_ratio) == "[0.5, 1)"
    f = _spec(s).compile()["implicit"].prog_f[0].tolist()
    assert f[P.DWELL_LO] == math.nextafter(3.0, math.inf) and f[P.DWELL_HI] == math.nextafter(15.0, -math.inf)
    assert (f[P.RATIO_LO], f[P.RATIO_HI]) == (0.5, math.nextafter(1.0, -math.inf))
    # exact for float64 values: nothing lies between a bound and its neighbour
    for v in (3.0, math.nextafter(3.0, 9), 15.0, math.nextafter(15.0, 0), 7.0, float("nan")):
        assert s.dwell.contains(v) == (f[P.DWELL_LO] <= v <= f[P.DWELL_HI])
    assert Range(0, 3) == (0, 3) and Range(0, 3, hi_open=True) != (0, 3) and hash(Range(0, 3)) != hash(Range(0, 3, True))
    assert SliceSpec.from_yaml(_spec(s).to_yaml()) == _spec(s)
    assert "dwell: (3, 15)" in _spec(s).to_yaml() and "dwell: [3.0, 15.0]" in _spec(_imp(dwell=(3, 15))).to_yaml()
    with pytest.raises(SpecError, match=r"slice 'y': dwell is an empty range: \[3, 3\) holds no value"):
        _imp(dwell="[3, 3)")
    with pytest.raises(SpecError, match=r"slice 'y': dwell must be a pair \(lo, hi\) or an interval such as"):
        _imp(dwell="3 to 15")
    assert _imp(dwell="[3, inf]").dwell == (3.0, math.inf) and _imp(dwell="[-inf, 2]").dwell == (-math.inf, 2.0)


def test_default_gap_beyond_the_loader_cut():
    # under the loader's 24 h cut every event is older than 1 d: a 1d-gap slice equals its gap-0 twin, which is
    # why the default distant slices skip 7 d instead
    twins = _spec(_imp("a", dwell=(15, math.inf)), _imp("b", dwell=(15, math.inf), gap="1d"), _imp("c", dwell=(15, math.inf), gap="7d"))
    prog = twins.compile()["implicit"]
    n = 200
    dt = torch.randint(DAY + 1, 30 * DAY, (n,)).sort(descending=True).values  # ages after the loader's cut
    req = torch.tensor([40 * DAY])
    floats = torch.stack([torch.full((n,), 30.0), torch.rand(n) * 60])
    keep, _ = reference.slice_membership(torch.tensor([0, n]), req - dt, torch.zeros(2, n, dtype=torch.int8), floats, req,
                                         prog.prog_i, prog.prog_f)
    assert torch.equal(keep[0], keep[1]) and not torch.equal(keep[0], keep[2])


def test_default_spec_is_installed_with_the_package():
    import importlib.resources

    text = (importlib.resources.files("dv365") / "specs" / "default.yaml").read_text()
    assert SliceSpec.from_yaml(text) == load_default_spec()


def test_with_num_rows():
    spec = load_default_spec(num_rows={"media_id": 1000, "author_id": 200, "topic_id": 10, "imp_topic": 7})
    rows = {t.name: t.num_rows for t in spec.tables}
    assert rows["exp_media"] == 1000 and rows["imp_wt_author"] == 200 and rows["exp_topic"] == 10 and rows["imp_topic"] == 7
    with pytest.raises(SpecError, match=r"num_rows has unknown keys \['song_id'\]"):
        spec.with_num_rows({"song_id": 3})


# CLI ----------------------------------------------------------------------------------------------
def test_cli_spec_show(capsys):
    assert cli.main(["spec", "show"]) == 0
    out = capsys.readouterr().out
    spec = load_default_spec()
    slice_lines = out.split("\n\n")[0].splitlines()[1:]
    rows = {line.split()[1]: line for line in slice_lines}
    assert list(rows) == list(spec.names)
    assert rows["imp_score_media_7d"].split()[:5] == ["159", "imp_score_media_7d", "implicit", "media_id", "imp_wt_media"]
    tables = {line.split()[0] for line in out.splitlines() if line.split()}
    assert {t.name for t in spec.tables} <= tables
    assert "193 slices (99 explicit, 94 implicit), 15 tables" in out
    header = out.splitlines()[0]
    assert header.index("table") == rows["exp_like_media_3d"].index("exp_media ")


def test_cli_spec_show_one_timeline(capsys, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(_spec(_exp("only_exp", action_types={"like"}), _imp("only_imp", dwell=(1, 2))).to_yaml())
    assert cli.main(["spec", "show", "--spec", str(path), "--timeline", "implicit"]) == 0
    out = capsys.readouterr().out
    assert "only_imp" in out and "only_exp" not in out and "dwell∈[1, 2]" in out
    path.write_text(_spec(_imp("open_imp", dwell="(15, inf]")).to_yaml())
    assert cli.main(["spec", "show", "--spec", str(path)]) == 0
    assert "dwell∈(15, inf]" in capsys.readouterr().out


def test_cli_spec_show_yaml_is_the_file_to_customise(capsys, tmp_path):
    # the docs say "write a spec with only the slices your data fills": --yaml prints one to edit
    assert cli.main(["spec", "show", "--yaml"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# the default dv365 slice spec") and SliceSpec.from_yaml(text) == load_default_spec()
    # keep the explicit slices only: delete the implicit entries (and their now unused tables stay valid)
    spec = SliceSpec.from_yaml(text)
    mine = tmp_path / "mine.yaml"
    mine.write_text(dataclasses.replace(spec, slices=spec.timeline_slices("explicit")).to_yaml())
    assert cli.main(["spec", "show", "--spec", str(mine), "--yaml"]) == 0
    again = capsys.readouterr().out
    assert again.startswith(f"# {mine}") and len(SliceSpec.from_yaml(again)) == 99
    assert cli.main(["spec", "validate", str(mine)]) == 0
    assert "99 slices (99 explicit, 0 implicit)" in capsys.readouterr().out
    assert cli.main(["spec", "show", "--yaml", "--timeline", "implicit"]) == 2
    assert "drop --timeline" in capsys.readouterr().err


def test_cli_spec_validate(capsys, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(load_default_spec().to_yaml())
    assert cli.main(["spec", "validate", str(good)]) == 0
    assert "193 slices" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("table: imp_wt_topic", "table: imp_wt_topics", 1))
    assert cli.main(["spec", "validate", str(bad)]) == 1
    assert "table 'imp_wt_topics' does not exist" in capsys.readouterr().err
