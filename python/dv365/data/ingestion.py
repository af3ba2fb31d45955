"""Ingestion of real interaction logs (CSV or Parquet) into a UniTi dataset (``dv365 ingest``; docs/data.md).

A column mapping names the log's columns: ``user``, ``item``, ``timestamp`` (required) and ``author``, ``topic``,
``action``, ``rating``, ``duration``, ``dwell``, ``media_type``, ``surface`` (optional).

Which timeline an event lands in:

- ``rating`` mapped: ``rating >= like_threshold`` is an explicit ``like``, anything else an implicit event;
- ``action`` mapped: explicit action names (``ACTION_TYPES`` plus a few aliases such as ``share``) are explicit,
  view-like names (``IMPLICIT_ACTIONS``) implicit, anything else a bad row;
- neither: every event is implicit.

Nothing is invented: an unmapped or empty ``duration`` / ``dwell`` stays null in Parquet (the manifest counts them
and the loader demands an explicit ``fill_missing``); an unmapped ``author`` / ``topic`` or an empty one becomes
id 0, reserved for "unknown" (real ones are 1, 2, ...). Users and items get dense ids in order of first appearance
(authors and topics likewise, from 1); the raw-to-dense maps are written to ``vocab/`` (``users``, ``items``,
``authors``, ``topics``). ``vocab_from`` numbers a later snapshot after an earlier dataset's maps instead.

Rows: a row that cannot be used is counted under its first failing reason (``IngestReport.bad_rows``) with its
line number and values in ``bad_samples``; a CSV row with too few or too many fields is the bad reason
``ragged_row``; a row repeating the header (concatenated files) and a blank line are skipped and counted apart.
When no row is kept, or more than ``max_bad_fraction`` of the data rows are bad, nothing is written and
``DataError`` says why. Timestamps are integers or floats (``881250949.0``; a fraction of the unit is dropped) in
``time_unit`` since the epoch, Arrow timestamps, or strings in ``time_format``; numeric data wholly outside
1990..2100 is kept with a warning naming the unit that would fit, numbers outside it beside others inside (a column
mixing units) are bad rows (``implausible_timestamp``).

Examples: the last ``examples_per_user`` events of each user become requests for their own item. Only labels the
log shows are set: ``liked`` from the rating or from a like on that item within ``label_window`` seconds; with
``action`` mapped every explicit task the same way; ``video_complete`` (dwell >= 0.9 duration), ``skip``
(dwell < 2 s) and ``watch_time`` where dwell and duration are known. Every other label is null (unobserved).
The report gives, per loader ``gap``, the share of examples with no event before ``request_ts - gap`` (their
slices all pool to zeros) and warns when it is large at the loader's 24 h gap.

Every step is a vectorised pass over the columns (sorts, ``searchsorted`` on composite keys), so the time grows
like ``n log n`` in the number of rows (benchmarks/bench_ingest.py).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..timeline import ACTION_TYPES, EXPLICIT, IMPLICIT, MEDIA_TYPES, SURFACES
from .parquet import Shard, write_dataset
from .schema import LABEL_COLUMNS, TASKS, DataError

REQUIRED = ("user", "item", "timestamp")
OPTIONAL = ("author", "topic", "action", "rating", "duration", "dwell", "media_type", "surface")
IMPLICIT_ACTIONS = ("view", "impression", "watch", "play", "click", "skip")
ACTION_ALIASES = {"liked": "like", "share": "reshare", "profile": "profile_visit", "external": "external_share",
                  "saved": "save", "favorite": "like", "favourite": "like"}
# What an unknown_* row would have needed: a log's own names (home_feed, share_external, ...) are rewritten to
# these before ingestion, so the report says which names exist.
ACCEPTED_VALUES = {
    "unknown_action": (f"explicit {', '.join(ACTION_TYPES)} (or {', '.join(ACTION_ALIASES)}); "
                       f"implicit {', '.join(IMPLICIT_ACTIONS)}"),
    "unknown_media_type": ", ".join(MEDIA_TYPES),
    "unknown_surface": ", ".join(SURFACES),
}
_REASON_HINTS = {
    "implausible_timestamp": " (outside 1990..2100 while the other rows are inside: a column mixing seconds and "
                             "milliseconds? convert those rows to one unit before ingesting)",
}
TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# Timestamps outside this range (1990-01-01 .. 2100-01-01 UTC) are almost always a wrong --time-unit.
PLAUSIBLE_TS = (631_152_000, 4_102_444_800)
# The loader gaps the empty-history report covers; the warning is about the loader's default (24 h).
REPORT_GAPS = (0, 3_600, 86_400)
WARN_EMPTY_SHARE = 0.2
# Looping a short clip a few times is real; most impressions dwelling 10x the duration is a unit mismatch.
DWELL_OVER_DURATION = 10
SAMPLES_PER_REASON = 3
# task label set by each explicit action
_ACTION_TASK = {"like": "liked", "comment": "comment", "reshare": "reshare", "save": "save", "follow": "follow",
                "profile_visit": "profile_visit", "external_share": "external_share"}
_INT_RE = r"^\s*[-+]?\d{1,18}\s*$"  # longer integers would overflow int64: parsed as floats
_FLOAT_RE = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


class IngestWarning(UserWarning):
    """Data that was kept but is probably not what the user meant (timestamps in 1970, empty histories)."""


@dataclasses.dataclass
class IngestReport:
    rows_read: int = 0  # data rows, ragged ones included; repeated headers and blank lines excluded
    rows_kept: int = 0
    header_rows: int = 0
    blank_lines: int = 0
    explicit_events: int = 0
    implicit_events: int = 0
    examples: int = 0
    users: int = 0
    items: int = 0
    bad_rows: dict[str, int] = dataclasses.field(default_factory=dict)
    bad_samples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    missing: dict[str, int] = dataclasses.field(default_factory=dict)
    empty_history_share: dict[str, float] = dataclasses.field(default_factory=dict)  # gap in s -> share
    notes: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def bad_lines(self) -> list[str]:
        lines = []
        for reason, n in sorted(self.bad_rows.items()):
            hint = ACCEPTED_VALUES.get(reason)
            hint = f" (accepted, any case: {hint})" if hint else _REASON_HINTS.get(reason, "")
            lines.append(f"bad rows: {reason}: {n}{hint}")
            lines += [f"    {s}" for s in self.bad_samples.get(reason, [])]
        return lines

    def __str__(self) -> str:
        skipped = [f"{n} {what}" for n, what in ((self.header_rows, "repeated header rows"),
                                                 (self.blank_lines, "blank lines")) if n]
        lines = [f"rows read {self.rows_read}, kept {self.rows_kept}, bad {self.rows_read - self.rows_kept}"
                 + (f" (also skipped: {', '.join(skipped)})" if skipped else ""),
                 f"users {self.users}, items {self.items}, explicit {self.explicit_events}, "
                 f"implicit {self.implicit_events}, examples {self.examples}"]
        lines += self.bad_lines()
        lines += [f"missing (kept, stored as null/unknown): {col}: {n}" for col, n in sorted(self.missing.items())]
        if self.empty_history_share:
            lines.append("examples with an empty history, by loader gap: " + ", ".join(
                f"{_gap_name(int(g))} {share:.0%}" for g, share in self.empty_history_share.items()))
        return "\n".join(lines + self.notes)


def _gap_name(gap: int) -> str:
    return f"{gap // 3600} h" if gap and gap % 3600 == 0 else f"{gap} s"


def parse_mapping(text: str) -> dict[str, str]:
    """``"user=userId,item=movieId,..."`` to a dict, checking the keys."""
    mapping = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise DataError(f"ingest: mapping entry {part!r} must look like key=column")
        k, v = (s.strip() for s in part.split("=", 1))
        mapping[k] = v
    return mapping


def parse_delimiter(text: str) -> str:
    """``,`` ``;`` ``|`` or a tab (``\\t``, ``tab``) to the one character pyarrow's CSV reader takes."""
    named = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}
    d = named.get(text.lower(), text)
    if len(d) != 1 or d in "\"\r\n":
        raise DataError(f"ingest: delimiter must be one character (or 'tab'), got {text!r}")
    return d


@dataclasses.dataclass
class _Source:
    table: pa.Table
    ragged: list[tuple[int | None, str]]  # (line number, text) of rows with the wrong number of fields
    where: str  # "line" (CSV: physical line numbers) or "row" (Parquet: 1-based row numbers)

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """Line numbers (CSV) or row numbers (Parquet) of table rows."""
        if self.where == "row":
            return rows + 1
        # row i is on line i + 2 (1-based, after the header) plus the ragged lines skipped before it
        skipped = np.sort(np.array([n for n, _ in self.ragged if n is not None], dtype=np.int64))
        rows_before = skipped - 2 - np.arange(skipped.size)
        return rows + 2 + np.searchsorted(rows_before, rows, side="right")


def _csv_header(path: Path, delimiter: str) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        first = f.readline()
    return next(csv.reader([first], delimiter=delimiter), [])


def _read(path: Path, fmt: str, columns: list[str], delimiter: str) -> _Source:
    if not path.is_file():
        raise DataError(f"ingest: input {path} does not exist")
    try:
        if fmt == "csv":
            names = _csv_header(path, delimiter)
            absent = [c for c in columns if c not in names]
            if absent:
                hint = ""
                for d, name in (("\t", "tab"), (";", ";"), ("|", "|"), (",", ",")):
                    if d != delimiter and len(names) == 1 and d in names[0]:
                        hint = f" (the header looks {name}-separated: pass delimiter={name!r})"
                raise DataError(f"ingest: column(s) {absent} not in {path}; its header has {names}{hint}")
            return _read_csv(path, columns, delimiter)
        if fmt == "parquet":
            schema = pq.read_schema(path)
            absent = [c for c in columns if c not in schema.names]
            if absent:
                raise DataError(f"ingest: column(s) {absent} not in {path}; it has {schema.names}")
            return _Source(pq.read_table(path, columns=columns), [], "row")
    except (pa.ArrowInvalid, OSError, UnicodeError) as e:
        msg = str(e)
        raise DataError(f"ingest: cannot read {path} as {fmt} ({msg.splitlines()[0]})") from None
    raise DataError(f"ingest: format must be 'csv' or 'parquet', got {fmt!r}")


def _read_csv(path: Path, columns: list[str], delimiter: str) -> _Source:
    def read(threads: bool) -> tuple[pa.Table, list[tuple[int | None, str]]]:
        ragged: list[tuple[int | None, str]] = []

        def on_invalid(row) -> str:
            ragged.append((row.number, row.text))
            return "skip"

        # blank lines are read as rows of empty values (not skipped) so that row i stays on a known line
        parse = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid, ignore_empty_lines=False)
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}, strings_can_be_null=True,
                                       include_columns=columns)
        table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(use_threads=threads), parse_options=parse,
                               convert_options=convert)
        return table, ragged

    table, ragged = read(True)
    if ragged and any(n is None for n, _ in ragged):
        # the threaded reader does not know line numbers; ragged files are rare, read this one again serially
        table, ragged = read(False)
    return _Source(table, ragged, "line")


def _as_string(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) else pc.cast(col, pa.string())


def _present(s: pa.ChunkedArray) -> np.ndarray:
    return pc.and_(s.is_valid(), pc.not_equal(pc.fill_null(s, ""), "")).to_numpy(zero_copy_only=False)


def _number(col: pa.ChunkedArray, integer: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, present, valid): ``present`` = not null / empty; ``valid`` = present and parses."""
    t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        present = col.is_valid().to_numpy(zero_copy_only=False)
        vals = col.fill_null(0).to_numpy().astype(np.int64 if integer else np.float64)
        valid = present.copy()
        if pa.types.is_floating(t):
            raw = col.fill_null(0).to_numpy()
            valid &= np.isfinite(raw) & ((raw == np.round(raw)) if integer else True)
        return vals, present, valid
    s = pc.utf8_trim_whitespace(_as_string(col))
    present = _present(s)
    ok = pc.fill_null(pc.match_substring_regex(s, _INT_RE if integer else _FLOAT_RE), False).to_numpy(zero_copy_only=False)
    target = pa.int64() if integer else pa.float64()
    vals = pc.cast(pc.if_else(ok, s, "0"), target).to_numpy().astype(np.int64 if integer else np.float64)
    return vals, present, ok & present


def _float_seconds(v: np.ndarray, unit: int) -> tuple[np.ndarray, np.ndarray]:
    """Float times in ``unit`` to whole seconds (floor) and where that is representable."""
    with np.errstate(invalid="ignore", over="ignore"):
        sec = np.floor(v / unit)
        ok = np.isfinite(sec) & (np.abs(sec) < 2.0**62)
    return np.where(ok, sec, 0).astype(np.int64), ok


def _timestamps(col: pa.ChunkedArray, unit: int, time_format: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(seconds, present, valid, numeric): integers, integral or fractional floats, or ``time_format`` strings."""
    t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        present = col.is_valid().to_numpy(zero_copy_only=False)
        ts = pc.cast(col, pa.timestamp("s")).cast(pa.int64()).fill_null(0).to_numpy()
        return ts, present, present, False
    if pa.types.is_integer(t):
        present = col.is_valid().to_numpy(zero_copy_only=False)
        return col.fill_null(0).to_numpy().astype(np.int64) // unit, present, present, True
    if pa.types.is_floating(t):
        present = col.is_valid().to_numpy(zero_copy_only=False)
        ts, ok = _float_seconds(col.fill_null(0).to_numpy().astype(np.float64), unit)
        return ts, present, present & ok, True
    s = pc.utf8_trim_whitespace(_as_string(col))
    present = _present(s)
    is_int = pc.fill_null(pc.match_substring_regex(s, _INT_RE), False).to_numpy(zero_copy_only=False)
    ts = pc.cast(pc.if_else(is_int, s, "0"), pa.int64()).to_numpy() // unit
    valid = is_int & present
    rest = present & ~valid
    numeric = True
    if rest.any():
        # integral floats ("881250949.0", "8.8125e8") and fractional ones, floored to the second
        is_float = pc.fill_null(pc.match_substring_regex(s, _FLOAT_RE), False).to_numpy(zero_copy_only=False) & rest
        if is_float.any():
            fv = pc.cast(pc.if_else(is_float, s, "0"), pa.float64()).to_numpy()
            sec, ok = _float_seconds(fv, unit)
            use = is_float & ok
            ts = np.where(use, sec, ts)
            valid |= use
        rest = present & ~valid
    if rest.any():
        parsed = pc.strptime(pc.if_else(rest, s, pa.scalar(None, pa.string())), format=time_format, unit="s",
                             error_is_null=True)
        p_ok = parsed.is_valid().to_numpy(zero_copy_only=False) & rest
        if p_ok.any():
            numeric = bool(valid.any())
            ts = np.where(p_ok, parsed.cast(pa.int64()).fill_null(0).to_numpy(), ts)
            valid |= p_ok
    return ts, present, valid, numeric


def _keys(col: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """Dense codes in order of first appearance, the dictionary, and presence."""
    s = pc.utf8_trim_whitespace(_as_string(col))
    present = _present(s)
    enc = pc.dictionary_encode(pc.if_else(present, s, pa.scalar(None, pa.string()))).combine_chunks()
    codes = enc.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, enc.dictionary, present


def _progress(enabled: bool, total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="dv365 ingest", unit="step", disable=not enabled, leave=False,
                bar_format="{desc}: {n_fmt}/{total_fmt} {bar} {elapsed} {postfix}")


def ingest(
    input: str | os.PathLike,
    out: str | os.PathLike,
    mapping: dict[str, str],
    *,
    format: str | None = None,
    delimiter: str = ",",
    like_threshold: float | None = None,
    time_unit: str = "s",
    time_format: str = "%Y-%m-%dT%H:%M:%S",
    media_type: str = "video",
    surface: str = "feed",
    examples_per_user: int = 1,
    label_window: int = 86400,
    users_per_shard: int = 1024,
    max_bad_fraction: float = 0.1,
    overwrite: bool = False,
    progress: bool = False,
    vocab_from: str | os.PathLike | None = None,
) -> IngestReport:
    """Convert an interaction log to a dataset at ``out`` (module docstring); returns the report, also stored
    in the manifest's ``source``. ``vocab_from``: an earlier ingested dataset whose ids this one keeps — every raw
    user, item, author and topic it numbered keeps its id (those absent from this log too: a user with no event
    here has an empty history), new ones get the next ids in order of first appearance — so that a model trained
    on it can be warm-started, and its users' embeddings refreshed, on this snapshot whatever the log's row order.
    Raises ``DataError`` (and writes nothing) when no row is kept or more than
    ``max_bad_fraction`` of the rows are bad; emits ``IngestWarning`` for implausible timestamps and for
    histories left empty by the loader's 24 h gap (also in ``IngestReport.warnings``). ``progress`` shows a
    tqdm bar on stderr."""
    path = Path(input)
    fmt = format or ("parquet" if path.suffix in (".parquet", ".pq") else "csv")
    unknown = sorted(set(mapping) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise DataError(f"ingest: unknown mapping key(s) {unknown}; keys are {REQUIRED + OPTIONAL}")
    absent = [k for k in REQUIRED if k not in mapping]
    if absent:
        raise DataError(f"ingest: mapping must name the {absent} column(s)")
    if "rating" in mapping and "action" in mapping:
        raise DataError("ingest: map either 'rating' or 'action', not both")
    if "rating" in mapping and like_threshold is None:
        raise DataError("ingest: 'rating' is mapped, so like_threshold is required")
    if users_per_shard < 1:
        raise DataError(f"ingest: users_per_shard must be >= 1, got {users_per_shard}")
    if examples_per_user < 0:
        raise DataError(f"ingest: examples_per_user must be >= 0, got {examples_per_user}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise DataError(f"ingest: max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    if time_unit not in TIME_UNITS:
        raise DataError(f"ingest: time_unit must be one of {sorted(TIME_UNITS)}, got {time_unit!r}")
    for name, value, vocab in (("media_type", media_type, MEDIA_TYPES), ("surface", surface, SURFACES)):
        if value not in vocab:
            raise DataError(f"ingest: default {name} must be one of {vocab}, got {value!r}")
    delimiter = parse_delimiter(delimiter)
    prev_vocab = _read_vocab(Path(vocab_from), mapping) if vocab_from is not None else None
    out = Path(out)
    if (out / "manifest.json").exists() and not overwrite:
        raise DataError(f"ingest: {out} already holds a dataset (pass overwrite=True to replace it)")

    bar = _progress(progress, 5)
    try:
        bar.set_postfix_str(f"reading {path.name}")
        cols = list(dict.fromkeys(mapping.values()))
        src = _read(path, fmt, cols, delimiter)
        bar.update()
        bar.set_postfix_str("parsing columns")
        rep = IngestReport()
        ev, examples, info = _parse(src, mapping, rep, like_threshold=like_threshold, unit=TIME_UNITS[time_unit],
                                    time_unit=time_unit, time_format=time_format, media_type=media_type,
                                    surface=surface, examples_per_user=examples_per_user, label_window=label_window,
                                    max_bad_fraction=max_bad_fraction, bar=bar, prev_vocab=prev_vocab)
        bar.set_postfix_str("writing shards")
        num_shards = -(-rep.users // users_per_shard)
        bar.total += max(num_shards, 1)
        for w in rep.warnings:
            warnings.warn(w, IngestWarning, stacklevel=2)
        write_dataset(out, _shards(ev, examples, rep.users, users_per_shard), items=_items(ev, rep.items),
                      source={"ingested_from": str(path), "format": fmt, "mapping": mapping,
                              "like_threshold": like_threshold, "time_unit": time_unit,
                              "defaults": {"media_type": media_type, "surface": surface}, "report": rep.as_dict(),
                              "vocab_from": str(vocab_from) if vocab_from is not None else None},
                      overwrite=overwrite, progress=lambda shard: bar.update())
        vocab_dir = out / "vocab"
        vocab_dir.mkdir(exist_ok=True)
        for name, (first_id, raws) in info.items():
            pq.write_table(pa.table({"id": np.arange(first_id, first_id + len(raws), dtype=np.int64), "raw": raws}),
                           vocab_dir / f"{name}.parquet")
        (out / "ingest_report.json").write_text(json.dumps(rep.as_dict(), indent=1))
        bar.update()
    finally:
        bar.close()
    return rep


def _parse(src: _Source, mapping: dict[str, str], rep: IngestReport, *, like_threshold, unit: int, time_unit: str,
           time_format: str, media_type: str, surface: str, examples_per_user: int, label_window: int,
           max_bad_fraction: float, bar, prev_vocab: dict[str, list[str]] | None = None):
    table = src.table
    n = table.num_rows
    bad = np.zeros(n, dtype=bool)
    reason_rows: dict[str, np.ndarray] = {}

    def flag(reason: str, mask: np.ndarray) -> None:
        new = mask & ~bad
        if new.any():
            rep.bad_rows[reason] = rep.bad_rows.get(reason, 0) + int(new.sum())
            reason_rows[reason] = np.flatnonzero(new)[:SAMPLES_PER_REASON]
            bad[:] |= new

    col = lambda key: table.column(mapping[key])  # noqa: E731
    # skipped, not bad: a header row repeated inside the data (concatenated files) and, in a CSV, a blank line
    skip = np.zeros(n, dtype=bool)
    if n:
        strings = {c: pc.utf8_trim_whitespace(_as_string(table.column(c))) for c in table.column_names
                   if not (pa.types.is_integer(table.column(c).type) or pa.types.is_floating(table.column(c).type)
                           or pa.types.is_timestamp(table.column(c).type))}
        if len(strings) == table.num_columns:
            header = np.ones(n, dtype=bool)
            blank = np.ones(n, dtype=bool)
            for c, s in strings.items():
                header &= pc.fill_null(pc.equal(s, c), False).to_numpy(zero_copy_only=False)
                blank &= ~_present(s)
            rep.header_rows = int(header.sum())
            rep.blank_lines = int(blank.sum()) if src.where == "line" else 0
            skip = header | (blank if src.where == "line" else np.zeros(n, dtype=bool))
    bad |= skip
    rep.rows_read = n - int(skip.sum()) + len(src.ragged)
    if src.ragged:
        rep.bad_rows["ragged_row"] = len(src.ragged)
        rep.bad_samples["ragged_row"] = [f"line {ln}: {text[:120]!r}" if ln is not None else repr(text[:120])
                                         for ln, text in src.ragged[:SAMPLES_PER_REASON]]

    user, user_dict, ok = _keys(col("user"))
    flag("missing_user", ~ok)
    item, item_dict, ok = _keys(col("item"))
    flag("missing_item", ~ok)

    ts, present, valid, numeric_ts = _timestamps(col("timestamp"), unit, time_format)
    flag("missing_timestamp", ~present)
    flag("bad_timestamp", ~valid)
    if numeric_ts:
        # Some numbers inside 1990..2100 and others outside: a column that mixes units (one client logging
        # milliseconds). No single time_unit reads both, and a kept row in the year 50000 would become the
        # dataset's latest time (the export's --cutoff auto) and a request no history precedes: those rows are bad.
        # A column wholly outside is kept, with the warning that names the unit that would fit (_check_time_range).
        lo, hi = PLAUSIBLE_TS
        usable = valid & ~bad
        outside = usable & ((ts < lo) | (ts >= hi))
        if outside.any() and (usable & ~outside).any():
            flag("implausible_timestamp", outside)

    explicit = np.zeros(n, dtype=bool)
    action = np.zeros(n, dtype=np.int8)
    if "rating" in mapping:
        rating, present, valid = _number(col("rating"), integer=False)
        flag("missing_rating", ~present)
        flag("bad_rating", ~valid)
        explicit = valid & (rating >= like_threshold)
    elif "action" in mapping:
        names = pc.utf8_lower(pc.utf8_trim_whitespace(_as_string(col("action"))))
        codes, dictionary, present = _keys(names)
        lookup_exp = np.full(len(dictionary) + 1, -1, dtype=np.int64)
        lookup_imp = np.zeros(len(dictionary) + 1, dtype=bool)
        for i, name in enumerate(dictionary.to_pylist()):
            name = ACTION_ALIASES.get(name, name)
            if name in ACTION_TYPES:
                lookup_exp[i] = ACTION_TYPES.index(name)
            lookup_imp[i] = name in IMPLICIT_ACTIONS
        flag("missing_action", ~present)
        flag("unknown_action", present & (lookup_exp[codes] < 0) & ~lookup_imp[codes])
        explicit = present & (lookup_exp[codes] >= 0)
        action = np.maximum(lookup_exp[codes], 0).astype(np.int8)

    floats = {}
    for key in ("duration", "dwell"):
        if key in mapping:
            v, present, valid = _number(col(key), integer=False)
            flag(f"bad_{key}", present & (~valid | (v < 0) | ~np.isfinite(v)))
            floats[key] = np.where(present, v, np.nan).astype(np.float32)
        else:
            floats[key] = np.full(n, np.nan, dtype=np.float32)
            rep.notes.append(f"note: {key} not mapped: every implicit event's {key} is null (unknown)")

    def cat(key: str, vocab: tuple[str, ...], default: str) -> np.ndarray:
        if key not in mapping:
            return np.full(n, vocab.index(default), dtype=np.int8)
        names = pc.utf8_lower(pc.utf8_trim_whitespace(_as_string(col(key))))
        codes, dictionary, present = _keys(names)
        lookup = np.array([vocab.index(x) if x in vocab else -1 for x in dictionary.to_pylist()] + [-1], dtype=np.int64)
        value = np.where(present, lookup[codes], vocab.index(default))
        flag(f"unknown_{key}", value < 0)
        return np.maximum(value, 0).astype(np.int8)

    media = cat("media_type", MEDIA_TYPES, media_type)
    surf = cat("surface", SURFACES, surface)

    vocab: dict[str, tuple[int, pa.Array]] = {}  # name -> (first id, raw id of each id from there)

    def optional_id(key: str) -> np.ndarray:
        if key not in mapping:
            rep.notes.append(f"note: {key} not mapped: every {key}_id is 0 (unknown)")
            return np.zeros(n, dtype=np.int64)
        codes, dictionary, present = _keys(col(key))
        rep.missing[key] = int((~present & ~bad).sum())
        # ids from 1 (0 is "unknown") in order of first appearance, or after an earlier dataset's (vocab_from)
        name = f"{key}s"
        remap, raws = _extend(prev_vocab, name, dictionary, FIRST_ID[name])
        vocab[name] = (FIRST_ID[name], raws)
        return np.where(present, remap[codes], 0)

    author = optional_id("author")
    topic = optional_id("topic")

    for reason, rows in reason_rows.items():
        rep.bad_samples[reason] = _samples(src, mapping, rows)
    keep = ~bad
    rep.rows_kept = int(keep.sum())
    _check_kept(rep, src, max_bad_fraction)
    bar.update()
    bar.set_postfix_str("sorting events")

    imp_keep = keep & ~explicit
    for key, name in (("duration", "video_duration"), ("dwell", "dwell_time")):
        rep.missing[name] = int((np.isnan(floats[key]) & imp_keep).sum())
    # dense ids over kept rows only, in order of first appearance
    user, user_raw = _compact(user, keep)
    item, item_raw = _compact(item, keep)
    for name, codes, dictionary, raw in (("users", user, user_dict, user_raw), ("items", item, item_dict, item_raw)):
        remap, raws = _extend(prev_vocab, name, dictionary.take(raw), FIRST_ID[name])
        codes[:] = remap[codes]
        vocab[name] = (FIRST_ID[name], raws)
    rep.users, rep.items = len(vocab["users"][1]), len(vocab["items"][1])

    idx = np.flatnonzero(keep)
    idx = idx[np.lexsort((ts[idx], user[idx]))]
    ev = {"user_id": user[idx], "ts": ts[idx], "media_id": item[idx], "author_id": author[idx], "topic_id": topic[idx],
          "media_type": media[idx], "surface": surf[idx], "action_type": action[idx],
          "video_duration": floats["duration"][idx], "dwell_time": floats["dwell"][idx], "explicit": explicit[idx]}
    if numeric_ts:
        _check_time_range(rep, ev["ts"], time_unit)
    _check_dwell_units(rep, ev)
    bar.update()
    bar.set_postfix_str("examples and labels")
    examples = _examples(ev, mapping, like_threshold is not None, examples_per_user, label_window)
    rep.explicit_events = int(ev["explicit"].sum())
    rep.implicit_events = int((~ev["explicit"]).sum())
    rep.examples = int(examples["user_id"].size)
    _check_histories(rep, ev, examples)
    bar.update()
    return ev, examples, vocab


def _samples(src: _Source, mapping: dict[str, str], rows: np.ndarray) -> list[str]:
    """``line 7: userId='x' movieId=None ...`` for a few bad rows: the mapped columns' raw values."""
    where = src.positions(rows)
    cols = {c: src.table.column(c).take(pa.array(rows)).to_pylist() for c in dict.fromkeys(mapping.values())}
    return [f"{src.where} {int(w)}: " + " ".join(f"{c}={v[i]!r}" for c, v in cols.items()) for i, w in enumerate(where)]


def _check_kept(rep: IngestReport, src: _Source, max_bad_fraction: float) -> None:
    bad = rep.rows_read - rep.rows_kept
    detail = "\n".join(["", *rep.bad_lines()])
    if rep.rows_read == 0:
        raise DataError("ingest: the input has no data rows (a header only?)"
                        + (f"; skipped {rep.header_rows} repeated header rows" if rep.header_rows else ""))
    if rep.rows_kept == 0:
        raise DataError(f"ingest: no row was kept: all {rep.rows_read} rows are bad (wrong mapping, time_unit or "
                        f"time_format?); nothing was written{detail}")
    if bad > max_bad_fraction * rep.rows_read:
        raise DataError(f"ingest: {bad} of {rep.rows_read} rows ({bad / rep.rows_read:.1%}) are bad, more than "
                        f"max_bad_fraction={max_bad_fraction:g}; nothing was written (raise max_bad_fraction to "
                        f"keep the good rows){detail}")


def _check_time_range(rep: IngestReport, ts: np.ndarray, time_unit: str) -> None:
    lo, hi = PLAUSIBLE_TS
    outside = int(((ts < lo) | (ts >= hi)).sum())
    if not outside:
        return

    def day(t: int) -> str:
        try:
            return datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc).strftime("%Y-%m-%d")
        except (OverflowError, OSError, ValueError):
            return f"{int(t)} s"

    median = float(np.median(ts)) * TIME_UNITS[time_unit]
    fits = [u for u, f in TIME_UNITS.items() if u != time_unit and lo <= median / f < hi]
    hint = f"; time_unit={fits[0]!r} would put them in {day(int(median / TIME_UNITS[fits[0]]))}" if fits else ""
    rep.warnings.append(
        f"warning: {outside} of {ts.size} timestamps ({outside / ts.size:.0%}) lie outside 1990..2100 "
        f"(they span {day(ts.min())} .. {day(ts.max())} with time_unit={time_unit!r}){hint}")


def _check_dwell_units(rep: IngestReport, ev: dict[str, np.ndarray]) -> None:
    """Warn when most dwell times exceed ``DWELL_OVER_DURATION`` times their duration: a dwell column in
    milliseconds (a common export) read as seconds, which would put nearly every event into the long-dwell and
    ratio >= 1 slices."""
    imp = ~ev["explicit"]
    dwell, dur = ev["dwell_time"][imp], ev["video_duration"][imp]
    both = np.isfinite(dwell) & np.isfinite(dur) & (dur > 0)
    n = int(both.sum())
    over = int((dwell[both] > DWELL_OVER_DURATION * dur[both]).sum())
    if n and over > 0.5 * n:
        rep.warnings.append(
            f"warning: the dwell time is more than {DWELL_OVER_DURATION}x the duration for {over} of {n} implicit "
            f"events with both known ({over / n:.0%}; median dwell {np.median(dwell[both]):.4g} s, median duration "
            f"{np.median(dur[both]):.4g} s): both are read as seconds; divide a column in milliseconds by 1000 "
            "before ingesting")


def _check_histories(rep: IngestReport, ev: dict[str, np.ndarray], examples: dict[str, np.ndarray]) -> None:
    m = examples["user_id"].size
    if not m:
        return
    counts = _count_before(ev["user_id"], ev["ts"], np.tile(examples["user_id"], len(REPORT_GAPS)),
                           np.concatenate([examples["request_ts"] - g for g in REPORT_GAPS]))
    empty = (counts.reshape(len(REPORT_GAPS), m) == 0).mean(axis=1)
    rep.empty_history_share = {str(g): round(float(e), 4) for g, e in zip(REPORT_GAPS, empty)}
    if empty[-1] > WARN_EMPTY_SHARE:
        shares = ", ".join(f"{_gap_name(g)} {e:.0%}" for g, e in zip(REPORT_GAPS, empty))
        rep.warnings.append(
            f"warning: {empty[-1]:.0%} of examples have no event more than 24 h before their request, so with the "
            f"loader's default gap=86400 all their slices pool to zeros (empty share by gap: {shares}); "
            f"use a smaller Loader gap for a log like this, or see 'Try it on real data' in docs/data.md")


def _count_before(user: np.ndarray, ts: np.ndarray, q_user: np.ndarray, q_ts: np.ndarray) -> np.ndarray:
    """Per query, the number of events of ``q_user`` with ``ts < q_ts`` (events sorted by (user, ts))."""
    lo = _segment_search(user, ts, q_user, q_ts, "left")
    return lo - np.searchsorted(user, q_user, "left")


def _segment_search(seg: np.ndarray, val: np.ndarray, q_seg: np.ndarray, q_val: np.ndarray, side: str) -> np.ndarray:
    """``searchsorted`` of (q_seg, q_val) pairs in rows sorted by (seg, val), as one search on composite keys.

    The values are replaced by their ranks among all values so the key ``seg * R + rank`` cannot overflow for any
    timestamp range (R <= len(val) + len(q_val))."""
    ranks = np.unique(np.concatenate([val, q_val]), return_inverse=True)[1].reshape(-1)
    r = np.int64(max(int(ranks.max(initial=0)) + 1, 1))
    key = seg.astype(np.int64) * r + ranks[: val.size]
    return np.searchsorted(key, q_seg.astype(np.int64) * r + ranks[val.size:], side)


# the id maps of vocab/ and the first id of each (authors and topics start at 1: 0 is "unknown")
FIRST_ID = {"users": 0, "items": 0, "authors": 1, "topics": 1}


def _read_vocab(prev: Path, mapping: dict[str, str]) -> dict[str, list[str]]:
    """The raw id of every id of an earlier ingested dataset (``vocab/<name>.parquet``; authors and topics from 1)."""
    out: dict[str, list[str]] = {}
    for name, first in FIRST_ID.items():
        path = prev / "vocab" / f"{name}.parquet"
        if not path.is_file():
            if name in ("users", "items"):
                raise DataError(f"ingest: vocab_from {prev} has no vocab/{name}.parquet: only a dataset written by "
                                "ingest has raw ids")
            if name[:-1] in mapping:
                raise DataError(f"ingest: vocab_from {prev} has no vocab/{name}.parquet (ingested before ingest kept "
                                f"{name[:-1]} ids): ingest it again first")
            continue
        t = pq.read_table(path)
        ids = t.column("id").to_numpy()
        if not np.array_equal(ids, np.arange(first, first + ids.size)):
            raise DataError(f"ingest: {path} does not number its ids {first}, {first + 1}, ... in order")
        out[name] = pc.cast(t.column("raw"), pa.string()).to_pylist()
    return out


def _extend(prev: dict[str, list[str]] | None, name: str, raws: pa.Array, first_id: int) -> tuple[np.ndarray, pa.Array]:
    """Ids for ``raws`` (this log's raw ids, by their current code): ``first_id + code`` without an earlier
    vocabulary; with one, a known raw id keeps its earlier id and the others get the next ones in code order. Also
    the raw id of every id from ``first_id`` on."""
    raws = pc.cast(raws, pa.string())
    if prev is None or name not in prev:
        return np.arange(first_id, first_id + len(raws), dtype=np.int64), raws
    old = prev[name]
    index = {r: i + first_id for i, r in enumerate(old)}
    out = list(old)
    remap = np.empty(len(raws), dtype=np.int64)
    for code, r in enumerate(raws.to_pylist()):
        i = index.get(r)
        if i is None:
            i = index[r] = first_id + len(out)
            out.append(r)
        remap[code] = i
    return remap, pa.array(out, pa.string())


def _compact(codes: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the codes of kept rows to 0..K-1 (first-appearance order kept); also the old code of each new id."""
    size = int(codes.max()) + 1 if codes.size else 0
    used = np.flatnonzero(np.bincount(codes[keep], minlength=size))
    remap = np.zeros(size, dtype=np.int64)
    remap[used] = np.arange(used.size)
    return remap[codes], used


def _items(ev: dict[str, np.ndarray], num_items: int) -> dict[str, np.ndarray]:
    # one row per item, from its latest event (authors/topics/media types of an item do not change in practice)
    # (an item kept from an earlier dataset's ids that has no event here gets the unknown author and topic 0)
    last = np.full(num_items, -1, dtype=np.int64)
    last[ev["media_id"]] = np.arange(ev["media_id"].size)
    seen = last >= 0
    dur = np.full(num_items, np.nan, dtype=np.float32)
    ok = ~np.isnan(ev["video_duration"])
    dur[ev["media_id"][ok]] = ev["video_duration"][ok]

    def latest(col: str) -> np.ndarray:
        out = np.zeros(num_items, dtype=ev[col].dtype)
        out[seen] = ev[col][last[seen]]
        return out

    return {"item_id": np.arange(num_items, dtype=np.int64), "author_id": latest("author_id"),
            "topic_id": latest("topic_id"), "media_type": latest("media_type"), "video_duration": dur}


def _examples(ev, mapping, rated: bool, k: int, window: int) -> dict[str, np.ndarray]:
    n = ev["user_id"].size
    user = ev["user_id"]
    # the last k events of each user (rows are sorted by user, ts)
    rank_from_end = np.zeros(n, dtype=np.int64)
    if n:
        ends = np.append(np.flatnonzero(np.diff(user)) + 1, n)
        starts = np.concatenate([[0], ends[:-1]])
        pos = np.arange(n) - np.repeat(starts, ends - starts)
        rank_from_end = np.repeat(ends - starts, ends - starts) - 1 - pos
    sel = np.flatnonzero(rank_from_end < k)
    m = sel.size
    labels = np.full((m, len(TASKS)), np.nan, dtype=np.float32)
    observed = [] if not (rated or "action" in mapping) else (["liked"] if rated else list(_ACTION_TASK.values()))
    for task in observed:
        labels[:, TASKS.index(task)] = 0.0
    ex = np.flatnonzero(ev["explicit"])
    if observed and m and ex.size:
        # explicit events of the same user on the same item within [request, request + window]: with the events
        # sorted by (pair, ts), each example's hits are one contiguous range found by two searches
        num_items = int(ev["media_id"].max()) + 1
        pair_ex = user[ex] * num_items + ev["media_id"][ex]
        pair_q = user[sel] * num_items + ev["media_id"][sel]
        pairs = np.unique(np.concatenate([pair_ex, pair_q]), return_inverse=True)[1].reshape(-1)
        pe, pq_ = pairs[: ex.size], pairs[ex.size:]
        order = np.lexsort((ev["ts"][ex], pe))
        pe, te = pe[order], ev["ts"][ex][order]
        t = ev["ts"][sel]
        lo = _segment_search(pe, te, pq_, t, "left")
        hi = _segment_search(pe, te, pq_, t + window, "right")
        cnt = hi - lo
        rows = np.repeat(np.arange(m), cnt)
        within = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        hit_action = ev["action_type"][ex[order[np.repeat(lo, cnt) + within]]]
        task_of = np.full(len(ACTION_TYPES), -1, dtype=np.int64)
        for a, name in enumerate(ACTION_TYPES):
            if _ACTION_TASK.get(name) in observed:
                task_of[a] = TASKS.index(_ACTION_TASK[name])
        task = task_of[hit_action]
        labels[rows[task >= 0], task[task >= 0]] = 1.0
    dur, dwell = ev["video_duration"][sel], ev["dwell_time"][sel]
    known = ~np.isnan(dur) & ~np.isnan(dwell) & ~ev["explicit"][sel]
    labels[:, TASKS.index("video_complete")] = np.where(known, (dwell >= 0.9 * dur).astype(np.float32), np.nan)
    labels[:, TASKS.index("skip")] = np.where(known, (dwell < 2.0).astype(np.float32), np.nan)
    cols = {"user_id": user[sel], "request_ts": ev["ts"][sel], "item_id": ev["media_id"][sel],
            "author_id": ev["author_id"][sel], "topic_id": ev["topic_id"][sel], "media_type": ev["media_type"][sel],
            "video_duration": dur}
    cols.update({name: np.ascontiguousarray(labels[:, i]) for i, name in enumerate(LABEL_COLUMNS)})
    cols["watch_time"] = np.where(known, dwell, np.nan).astype(np.float32)
    return cols


def _shards(ev, examples, num_users: int, per_shard: int):
    exp = ev["explicit"]
    timeline_cols = {
        EXPLICIT: ("user_id", "ts", "media_id", "author_id", "topic_id", "action_type", "media_type", "surface"),
        IMPLICIT: ("user_id", "ts", "media_id", "author_id", "topic_id", "media_type", "surface", "video_duration", "dwell_time"),
    }
    parts = {EXPLICIT: {c: ev[c][exp] for c in timeline_cols[EXPLICIT]},
             IMPLICIT: {c: ev[c][~exp] for c in timeline_cols[IMPLICIT]}, "examples": examples}
    for first in range(0, max(num_users, 1), per_shard):
        end = min(first + per_shard, num_users)
        tables = {}
        for name, cols in parts.items():
            lo, hi = np.searchsorted(cols["user_id"], [first, end])
            tables[name] = {c: v[lo:hi] for c, v in cols.items()}
        yield Shard(first, end, tables[EXPLICIT], tables[IMPLICIT], tables["examples"])
