"""On-disk schema of a UniTi dataset (docs/design.md#uniti-timelines): one Arrow schema per table, checked on every read.

Tables (all sharded by user, rows sorted by ``user_id`` then ``ts`` / ``request_ts``):

- ``explicit``: one row per explicit action (like, comment, reshare, ...)
- ``implicit``: one row per impression / view, with ``video_duration`` and ``dwell_time`` (null = unknown)
- ``examples``: one row per training request (user, request time, candidate item, 9 binary labels, watch time);
  a null label means "not observed" (ingested logs rarely carry every task), never "negative"
- ``items`` (one file, not sharded): the item catalogue (candidate features for retrieval)
"""

from __future__ import annotations

import pyarrow as pa

import numpy as np

from ..timeline import CAT_FIELDS, EXPLICIT, FLOAT_FIELDS, ID_FIELDS, IMPLICIT, VOCABULARIES

SCHEMA_VERSION = 1

# The 9 binary tasks of the backbone, in label-column order (docs/design.md#user-towers-and-backbone);
# watch_time is the regression task.
TASKS = ("video_complete", "skip", "reshare", "profile_visit", "external_share", "follow", "liked", "save", "comment")
LABEL_COLUMNS = tuple(f"label_{t}" for t in TASKS)

EXAMPLES = "examples"
ITEMS = "items"
SHARDED_TABLES = (EXPLICIT, IMPLICIT, EXAMPLES)

_CAT = pa.int8()
_ID = pa.int64()
_F = pa.float32()


def _timeline_schema(kind: str) -> pa.Schema:
    fields = [pa.field("user_id", _ID, False), pa.field("ts", _ID, False)]
    fields += [pa.field(name, _ID, False) for name in ID_FIELDS]
    fields += [pa.field(name, _CAT, False) for name in CAT_FIELDS[kind]]
    fields += [pa.field(name, _F, True) for name in FLOAT_FIELDS[kind]]
    return pa.schema(fields)


SCHEMAS: dict[str, pa.Schema] = {
    EXPLICIT: _timeline_schema(EXPLICIT),
    IMPLICIT: _timeline_schema(IMPLICIT),
    EXAMPLES: pa.schema(
        [
            pa.field("user_id", _ID, False),
            pa.field("request_ts", _ID, False),
            pa.field("item_id", _ID, False),
            pa.field("author_id", _ID, False),
            pa.field("topic_id", _ID, False),
            pa.field("media_type", _CAT, False),
            pa.field("video_duration", _F, True),
            *[pa.field(name, _F, True) for name in LABEL_COLUMNS],
            pa.field("watch_time", _F, True),
        ]
    ),
    ITEMS: pa.schema(
        [
            pa.field("item_id", _ID, False),
            pa.field("author_id", _ID, False),
            pa.field("topic_id", _ID, False),
            pa.field("media_type", _CAT, False),
            pa.field("video_duration", _F, True),
        ]
    ),
}

# The column that orders rows within a user.
TIME_COLUMN = {EXPLICIT: "ts", IMPLICIT: "ts", EXAMPLES: "request_ts"}


class DataError(ValueError):
    """A dataset, file or input log that breaks the UniTi storage contract."""


def check_table(table: pa.Table, name: str, where: str) -> pa.Table:
    """Check ``table`` against ``SCHEMAS[name]``: every column present with its exact type, no nulls where
    the schema forbids them. Returns the table with its columns in schema order (extra columns dropped)."""
    schema = SCHEMAS[name]
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing} (table {name!r} needs {schema.names})")
    for f in schema:
        col = table.column(f.name)
        if col.type != f.type:
            raise DataError(f"{where}: column {f.name!r} must be {f.type}, got {col.type}")
        if not f.nullable and col.null_count:
            raise DataError(f"{where}: column {f.name!r} has {col.null_count} null value(s); it must have none")
    return table.select(schema.names)


def check_values(cols: dict[str, np.ndarray], name: str, where: str) -> None:
    """Value ranges the timeline ops rely on: categorical values inside their vocabulary, ids >= 0, float
    columns >= 0 (NaN = unknown is allowed: it is null in Parquet)."""
    for f in SCHEMAS[name]:
        col = cols[f.name]
        if col.size == 0:
            continue
        if f.name in VOCABULARIES:
            lo, hi = int(col.min()), int(col.max())
            if lo < 0 or hi >= len(VOCABULARIES[f.name]):
                raise DataError(f"{where}: column {f.name!r} values must lie in [0, {len(VOCABULARIES[f.name])}) "
                                f"({VOCABULARIES[f.name]}), got [{lo}, {hi}]")
        elif f.name in ID_FIELDS or f.name in ("item_id", "user_id"):
            if int(col.min()) < 0:
                raise DataError(f"{where}: column {f.name!r} must be >= 0, got {int(col.min())}")
        elif col.dtype.kind == "f":
            bad = np.isinf(col) | (col < 0)
            if bad.any():
                raise DataError(f"{where}: column {f.name!r} must be >= 0 and finite (or null), "
                                f"got {col[np.flatnonzero(bad)[0]]} at row {int(np.flatnonzero(bad)[0])}")
