"""Random UniTi timeline batches for tests, and a naive per-event slice evaluator (the spec compiler's oracle).

The data hits the spec's boundaries on purpose: events exactly at 3 d / 7 d / 24 h / 0 s before the
request and in the future, dwell times exactly at the default buckets' bounds, zero durations (ratio
and score divide by zero), dwell == duration (ratio exactly 1), and categorical values past the end of
each vocabulary (never selected by a name).
"""

from __future__ import annotations

import math
import random

import torch

from dv365_ops import program as P
from dv365.spec import DAY, DebiasedScore, Range, Slice, SliceSpec, Table
from dv365.timeline import ACTION_TYPES, CAT_FIELDS, EXPLICIT, MEDIA_TYPES, SURFACES, TimelineBatch

VOCAB_SIZE = {"action_type": len(ACTION_TYPES), "media_type": len(MEDIA_TYPES), "surface": len(SURFACES)}
BOUNDARY_DT = [0, 1, 3 * DAY, 3 * DAY + 1, 7 * DAY, 7 * DAY + 1, DAY, DAY + 1, -5]
BOUNDARY_SECONDS = [0.0, 3.0, 15.0, 60.0]
RANDOM_SPEC_TABLES = (
    Table("em", "media_id", num_rows=50),
    Table("ea", "author_id", num_rows=50),
    Table("im", "media_id", num_rows=50),
    Table("it", "topic_id", num_rows=50),
)


def random_batch(kind: str, lengths: list[int], request_ts: torch.Tensor, num_ids: int = 50) -> TimelineBatch:
    n = sum(lengths)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    user = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths, dtype=torch.int64), output_size=n)
    dt = torch.randint(-DAY, 30 * DAY, (n,))
    special = torch.rand(n) < 0.3
    dt[special] = torch.tensor(BOUNDARY_DT)[torch.randint(len(BOUNDARY_DT), (int(special.sum()),))]
    ts = request_ts[user] - dt
    # ascending within each user: sort by (user, ts)
    order = torch.argsort(user * 2**40 + (ts - request_ts.min() + 40 * DAY), stable=True)
    ts = ts[order]
    columns = {
        "ts": ts,
        "media_id": torch.randint(num_ids, (n,)),
        "author_id": torch.randint(num_ids, (n,)),
        "topic_id": torch.randint(num_ids, (n,)),
    }
    for name in CAT_FIELDS[kind]:
        columns[name] = torch.randint(VOCAB_SIZE[name] + 2, (n,), dtype=torch.int8)
    if kind != EXPLICIT:
        duration = torch.rand(n) * 120
        dwell = torch.rand(n) * 150
        pick = torch.rand(n)
        duration[pick < 0.1] = 0.0
        dwell[(pick >= 0.1) & (pick < 0.2)] = duration[(pick >= 0.1) & (pick < 0.2)]
        exact = (pick >= 0.2) & (pick < 0.45)
        dwell[exact] = torch.tensor(BOUNDARY_SECONDS)[torch.randint(len(BOUNDARY_SECONDS), (int(exact.sum()),))]
        columns["video_duration"] = duration
        columns["dwell_time"] = dwell
    return TimelineBatch.from_columns(kind, offsets, **columns)


def random_request_ts(num_users: int) -> torch.Tensor:
    return torch.randint(1_700_000_000, 1_800_000_000, (num_users,))


def _div(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 else math.copysign(math.inf, a)
    return a / b


def naive_event(s: Slice, batch: TimelineBatch, e: int, request_ts: int) -> tuple[bool, float]:
    """Does slice ``s`` keep event ``e``, and with what weight: the paper's definitions, one event at a time."""
    dt = request_ts - int(batch.ts[e])
    if not dt > s.gap:
        return False, 0.0
    if s.window is not None and not dt <= s.window:
        return False, 0.0
    for field, column, vocab in (
        ("action_types", "action_type", ACTION_TYPES),
        ("media_types", "media_type", MEDIA_TYPES),
        ("surfaces", "surface", SURFACES),
    ):
        names = getattr(s, field)
        if names is None:
            continue
        value = int(batch.column(column)[e])
        if value >= len(vocab) or vocab[value] not in names:
            return False, 0.0
    if batch.kind == EXPLICIT:
        return True, 1.0
    duration = float(batch.column("video_duration")[e])
    dwell = float(batch.column("dwell_time")[e])
    # unknown fields (dv365_ops/program.py): a dwell must be finite and >= 0, a duration finite and > 0
    if not (math.isfinite(dwell) and dwell >= 0):
        dwell = math.nan
    if not (math.isfinite(duration) and duration > 0):
        duration = math.nan
    if s.dwell is not None and not s.dwell.contains(dwell):
        return False, 0.0
    if s.watch_ratio is not None:
        ratio = _div(dwell, duration**s.beta)
        if not s.watch_ratio.contains(ratio):
            return False, 0.0
    if s.weight is None:
        return True, 1.0
    denom = math.log1p(s.weight.gamma * duration)
    if not denom > 0:
        return False, 0.0
    score = math.log1p(dwell) / denom
    return (True, min(score, P.MAX_SCORE)) if score > s.weight.s0 else (False, 0.0)


def naive_slices(spec: SliceSpec, batches: dict[str, TimelineBatch], request_ts: torch.Tensor):
    """``out[s][b]`` = list of (id, weight) that spec slice ``s`` selects for user ``b``, in timeline order."""
    out = []
    for s in spec.slices:
        batch = batches[s.timeline]
        ids = batch.column(s.id_field)
        per_user = []
        for b in range(batch.num_users):
            kept = []
            for e in range(int(batch.offsets[b]), int(batch.offsets[b + 1])):
                keep, w = naive_event(s, batch, e, int(request_ts[b]))
                if keep:
                    kept.append((int(ids[e]), w))
            per_user.append(kept)
        out.append(per_user)
    return out


def _random_ends(lo: float, hi: float, rng: random.Random) -> Range:
    """``[lo, hi]``, or with one end open now and then (never an empty range)."""
    end = rng.choice(["", "", "lo", "hi"]) if lo < hi else ""
    return Range(lo, hi, lo_open=end == "lo", hi_open=end == "hi")


def _random_slice(name: str, rng: random.Random) -> Slice:
    timeline = rng.choice(["explicit", "implicit"])
    table = rng.choice(["em", "ea"] if timeline == "explicit" else ["im", "it"])
    kw: dict = {}
    for field, vocab in (("action_types", ACTION_TYPES), ("media_types", MEDIA_TYPES), ("surfaces", SURFACES)):
        if (field != "action_types" or timeline == "explicit") and rng.random() < 0.4:
            kw[field] = set(rng.sample(vocab, rng.randint(1, len(vocab))))
    gap = rng.choice([0, 0, 0, DAY, 3600])
    kw["gap"] = gap
    kw["window"] = rng.choice([None, 3 * DAY, 7 * DAY, gap + 1, 30 * DAY])
    if timeline == "implicit":
        if rng.random() < 0.4:
            lo = rng.choice([0.0, 3.0, 15.0, rng.uniform(0, 100)])
            kw["dwell"] = _random_ends(lo, rng.choice([lo, lo + rng.uniform(0, 100), float("inf")]), rng)
        if rng.random() < 0.4:
            lo = rng.choice([0.0, 0.2, 1.0, rng.uniform(0, 2)])
            kw["watch_ratio"] = _random_ends(lo, rng.choice([lo + rng.uniform(0, 2), float("inf"), 1.0 if lo <= 1 else lo]), rng)
            kw["beta"] = rng.choice([1.0, 0.5, rng.uniform(0.1, 2.0)])
        if rng.random() < 0.3:
            kw["weight"] = DebiasedScore(rng.choice([1.0, 0.5, rng.uniform(0.1, 3)]), rng.choice([0.0, 0.5, rng.uniform(-1, 2)]))
    id_field = {"em": "media_id", "ea": "author_id", "im": "media_id", "it": "topic_id"}[table]
    return Slice(name=name, timeline=timeline, id_field=id_field, table=table, **kw)


def random_spec(num_slices: int, dim: int = 8) -> SliceSpec:
    """Slices with random filters over four small tables, explicit and implicit interleaved."""
    rng = random.Random(torch.randint(2**31, ()).item())
    slices = [_random_slice(f"s{i}", rng) for i in range(num_slices)]
    return SliceSpec(slices=slices, tables=RANDOM_SPEC_TABLES, dim=dim)
