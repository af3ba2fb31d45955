"""Ingestion of real interaction logs (CSV or Parquet) into a UniTi dataset (``dv365 ingest``; DESIGN.md 1.1).

A column mapping names the log's columns: ``user``, ``item``, ``timestamp`` (required) and ``author``, ``topic``,
``action``, ``rating``, ``duration``, ``dwell``, ``media_type``, ``surface`` (optional).

Which timeline an event lands in:

- ``rating`` mapped: ``rating >= like_threshold`` is an explicit ``like``, anything else an implicit event;
- ``action`` mapped: explicit action names (``ACTION_TYPES`` plus a few aliases such as ``share``) are explicit,
  view-like names (``IMPLICIT_ACTIONS``) implicit, anything else a bad row;
- neither: every event is implicit.

Nothing is invented: an unmapped or empty ``duration`` / ``dwell`` stays null in Parquet (the manifest counts them
and the loader demands an explicit ``fill_missing``); an unmapped ``author`` / ``topic`` or an empty one becomes
id 0, reserved for "unknown" (real ones are 1, 2, ...). Users and items get dense ids in order of first appearance;
the raw-to-dense maps are written to ``vocab/``. A row that cannot be used is counted under its first failing
reason (``IngestReport.bad_rows``); every other row is kept.

Examples: the last ``examples_per_user`` events of each user become requests for their own item. Only labels the
log shows are set: ``liked`` from the rating or from a like on that item within ``label_window`` seconds; with
``action`` mapped every explicit task the same way; ``video_complete`` (dwell >= 0.9 duration), ``skip``
(dwell < 2 s) and ``watch_time`` where dwell and duration are known. Every other label is null (unobserved).
"""

from __future__ import annotations

import dataclasses
import json
import os
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
TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# task label set by each explicit action
_ACTION_TASK = {"like": "liked", "comment": "comment", "reshare": "reshare", "save": "save", "follow": "follow",
                "profile_visit": "profile_visit", "external_share": "external_share"}
_INT_RE = r"^\s*[-+]?\d+\s*$"
_FLOAT_RE = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


@dataclasses.dataclass
class IngestReport:
    rows_read: int = 0
    rows_kept: int = 0
    explicit_events: int = 0
    implicit_events: int = 0
    examples: int = 0
    users: int = 0
    items: int = 0
    bad_rows: dict[str, int] = dataclasses.field(default_factory=dict)
    missing: dict[str, int] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        lines = [f"rows read {self.rows_read}, kept {self.rows_kept}, bad {self.rows_read - self.rows_kept}",
                 f"users {self.users}, items {self.items}, explicit {self.explicit_events}, "
                 f"implicit {self.implicit_events}, examples {self.examples}"]
        lines += [f"bad rows: {reason}: {n}" for reason, n in sorted(self.bad_rows.items())]
        lines += [f"missing (kept, stored as null/unknown): {col}: {n}" for col, n in sorted(self.missing.items())]
        return "\n".join(lines + self.notes)


def parse_mapping(text: str) -> dict[str, str]:
    """``"user=userId,item=movieId,..."`` to a dict, checking the keys."""
    mapping = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise DataError(f"ingest: mapping entry {part!r} must look like key=column")
        k, v = (s.strip() for s in part.split("=", 1))
        mapping[k] = v
    return mapping


def _read(path: Path, fmt: str, columns: list[str]) -> pa.Table:
    if not path.is_file():
        raise DataError(f"ingest: input {path} does not exist")
    try:
        if fmt == "csv":
            with pacsv.open_csv(path) as reader:
                names = reader.schema.names
            absent = [c for c in columns if c not in names]
            if absent:
                raise DataError(f"ingest: column(s) {absent} not in {path}; it has {names}")
            opts = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}, strings_can_be_null=True,
                                        include_columns=columns)
            return pacsv.read_csv(path, convert_options=opts)
        if fmt == "parquet":
            schema = pq.read_schema(path)
            absent = [c for c in columns if c not in schema.names]
            if absent:
                raise DataError(f"ingest: column(s) {absent} not in {path}; it has {schema.names}")
            return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        msg = str(e)
        raise DataError(f"ingest: cannot read {path} as {fmt} ({msg.splitlines()[0]})") from None
    raise DataError(f"ingest: format must be 'csv' or 'parquet', got {fmt!r}")


def _as_string(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) else pc.cast(col, pa.string())


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
    present = pc.and_(s.is_valid(), pc.not_equal(pc.fill_null(s, ""), "")).to_numpy(zero_copy_only=False)
    ok = pc.fill_null(pc.match_substring_regex(s, _INT_RE if integer else _FLOAT_RE), False).to_numpy(zero_copy_only=False)
    target = pa.int64() if integer else pa.float64()
    vals = pc.cast(pc.if_else(ok, s, "0"), target).to_numpy().astype(np.int64 if integer else np.float64)
    return vals, present, ok & present


def _keys(col: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """Dense codes in order of first appearance, the dictionary, and presence."""
    s = pc.utf8_trim_whitespace(_as_string(col))
    present = pc.and_(s.is_valid(), pc.not_equal(pc.fill_null(s, ""), "")).to_numpy(zero_copy_only=False)
    enc = pc.dictionary_encode(pc.if_else(present, s, pa.scalar(None, pa.string()))).combine_chunks()
    codes = enc.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, enc.dictionary, present


def ingest(
    input: str | os.PathLike,
    out: str | os.PathLike,
    mapping: dict[str, str],
    *,
    format: str | None = None,
    like_threshold: float | None = None,
    time_unit: str = "s",
    time_format: str = "%Y-%m-%dT%H:%M:%S",
    media_type: str = "video",
    surface: str = "feed",
    examples_per_user: int = 1,
    label_window: int = 86400,
    users_per_shard: int = 1024,
    overwrite: bool = False,
) -> IngestReport:
    """Convert an interaction log to a dataset at ``out`` (module docstring); returns the report, also stored
    in the manifest's ``source``."""
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
    if users_per_shard < 1 or examples_per_user < 0:
        raise DataError(f"ingest: users_per_shard must be >= 1 and examples_per_user >= 0, got {users_per_shard}, "
                        f"{examples_per_user}")
    if time_unit not in TIME_UNITS:
        raise DataError(f"ingest: time_unit must be one of {sorted(TIME_UNITS)}, got {time_unit!r}")
    for name, value, vocab in (("media_type", media_type, MEDIA_TYPES), ("surface", surface, SURFACES)):
        if value not in vocab:
            raise DataError(f"ingest: default {name} must be one of {vocab}, got {value!r}")
    cols = list(dict.fromkeys(mapping.values()))
    table = _read(path, fmt, cols)
    n = table.num_rows
    rep = IngestReport(rows_read=n)
    bad = np.zeros(n, dtype=bool)

    def flag(reason: str, mask: np.ndarray) -> None:
        new = mask & ~bad
        if new.any():
            rep.bad_rows[reason] = rep.bad_rows.get(reason, 0) + int(new.sum())
            bad[:] |= new

    col = lambda key: table.column(mapping[key])  # noqa: E731
    user, user_dict, ok = _keys(col("user"))
    flag("missing_user", ~ok)
    item, item_dict, ok = _keys(col("item"))
    flag("missing_item", ~ok)

    tcol = col("timestamp")
    if pa.types.is_timestamp(tcol.type):
        present = tcol.is_valid().to_numpy(zero_copy_only=False)
        ts = pc.cast(tcol, pa.timestamp("s")).cast(pa.int64()).fill_null(0).to_numpy()
        flag("missing_timestamp", ~present)
    else:
        ts, present, valid = _number(tcol, integer=True)
        if not pa.types.is_integer(tcol.type) and not pa.types.is_floating(tcol.type):
            parsed = pc.strptime(pc.utf8_trim_whitespace(_as_string(tcol)), format=time_format, unit="s", error_is_null=True)
            p_ok = parsed.is_valid().to_numpy(zero_copy_only=False) & ~valid
            ts = np.where(p_ok, parsed.cast(pa.int64()).fill_null(0).to_numpy(), ts // TIME_UNITS[time_unit])
            valid = valid | p_ok
        else:
            ts = ts // TIME_UNITS[time_unit]
        flag("missing_timestamp", ~present)
        flag("bad_timestamp", ~valid)

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

    def optional_id(key: str) -> np.ndarray:
        if key not in mapping:
            rep.notes.append(f"note: {key} not mapped: every {key}_id is 0 (unknown)")
            return np.zeros(n, dtype=np.int64)
        codes, _, present = _keys(col(key))
        rep.missing[key] = int((~present & ~bad).sum())
        return np.where(present, codes + 1, 0)

    author = optional_id("author")
    topic = optional_id("topic")

    keep = ~bad
    rep.rows_kept = int(keep.sum())
    imp_keep = keep & ~explicit
    for key, name in (("duration", "video_duration"), ("dwell", "dwell_time")):
        rep.missing[name] = int((np.isnan(floats[key]) & imp_keep).sum())
    # dense ids over kept rows only, in order of first appearance
    user, user_raw = _compact(user, keep)
    item, item_raw = _compact(item, keep)
    num_users = int(user[keep].max()) + 1 if rep.rows_kept else 0
    rep.users, rep.items = num_users, (int(item[keep].max()) + 1 if rep.rows_kept else 0)

    idx = np.flatnonzero(keep)
    idx = idx[np.lexsort((ts[idx], user[idx]))]
    ev = {"user_id": user[idx], "ts": ts[idx], "media_id": item[idx], "author_id": author[idx], "topic_id": topic[idx],
          "media_type": media[idx], "surface": surf[idx], "action_type": action[idx],
          "video_duration": floats["duration"][idx], "dwell_time": floats["dwell"][idx], "explicit": explicit[idx]}
    examples = _examples(ev, mapping, like_threshold is not None, examples_per_user, label_window)
    rep.explicit_events = int(ev["explicit"].sum())
    rep.implicit_events = int((~ev["explicit"]).sum())
    rep.examples = int(examples["user_id"].size)

    out = Path(out)
    write_dataset(out, _shards(ev, examples, num_users, users_per_shard), items=_items(ev, rep.items),
                  source={"ingested_from": str(path), "format": fmt, "mapping": mapping, "like_threshold": like_threshold,
                          "defaults": {"media_type": media_type, "surface": surface}, "report": rep.as_dict()},
                  overwrite=overwrite)
    vocab_dir = out / "vocab"
    vocab_dir.mkdir(exist_ok=True)
    for name, dictionary, raw in (("users", user_dict, user_raw), ("items", item_dict, item_raw)):
        pq.write_table(pa.table({"id": np.arange(raw.size, dtype=np.int64), "raw": dictionary.take(raw)}),
                       vocab_dir / f"{name}.parquet")
    (out / "ingest_report.json").write_text(json.dumps(rep.as_dict(), indent=1))
    return rep


def _compact(codes: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the codes of kept rows to 0..K-1 (first-appearance order kept); also the old code of each new id."""
    used = np.unique(codes[keep])
    remap = np.zeros(int(codes.max()) + 1 if codes.size else 0, dtype=np.int64)
    remap[used] = np.arange(used.size)
    return remap[codes], used


def _items(ev: dict[str, np.ndarray], num_items: int) -> dict[str, np.ndarray]:
    # one row per item, from its latest event (authors/topics/media types of an item do not change in practice)
    last = np.full(num_items, -1, dtype=np.int64)
    last[ev["media_id"]] = np.arange(ev["media_id"].size)
    dur = np.full(num_items, np.nan, dtype=np.float32)
    ok = ~np.isnan(ev["video_duration"])
    dur[ev["media_id"][ok]] = ev["video_duration"][ok]
    return {"item_id": np.arange(num_items, dtype=np.int64), "author_id": ev["author_id"][last],
            "topic_id": ev["topic_id"][last], "media_type": ev["media_type"][last], "video_duration": dur}


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
    if observed:
        # explicit events of the same user on the same item within [request, request + window]
        ex = np.flatnonzero(ev["explicit"])
        key_ex = np.lexsort((ev["ts"][ex], ev["media_id"][ex], user[ex]))
        ex = ex[key_ex]
        for j, i in enumerate(sel.tolist()):
            lo = np.searchsorted(user[ex], user[i], "left")
            hi = np.searchsorted(user[ex], user[i], "right")
            seg = ex[lo:hi]
            hit = seg[(ev["media_id"][seg] == ev["media_id"][i]) & (ev["ts"][seg] >= ev["ts"][i])
                      & (ev["ts"][seg] <= ev["ts"][i] + window)]
            for a in ev["action_type"][hit].tolist():
                task = _ACTION_TASK[ACTION_TYPES[a]]
                if task in observed:
                    labels[j, TASKS.index(task)] = 1.0
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
