"""TimelineBatch: the layout contract (docs/design.md#uniti-timelines), cut(), and the KeyedJaggedTensor round trip."""

from __future__ import annotations

import pytest
import torch
from timeline_data import random_batch, random_request_ts

from dv365.timeline import CAT_FIELDS, FLOAT_FIELDS, ID_FIELDS, TimelineBatch, TimelineError


def _columns(kind: str, lengths: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    batch = random_batch(kind, lengths, random_request_ts(len(lengths)))
    return batch.offsets, {name: batch.column(name).clone() for name in batch.fields()}


@pytest.mark.parametrize("kind", ["explicit", "implicit"])
def test_from_columns_layout(kind):
    offsets, cols = _columns(kind, [3, 0, 5])
    batch = TimelineBatch.from_columns(kind, offsets, **cols)
    assert batch.ids.shape == (3, 8) and batch.cats.shape == (len(CAT_FIELDS[kind]), 8)
    assert batch.floats.shape == (len(FLOAT_FIELDS[kind]), 8) and batch.num_users == 3 and batch.num_events == 8
    for name, col in cols.items():
        assert torch.equal(batch.column(name), col.to(batch.column(name).dtype))
    assert batch.lengths.tolist() == [3, 0, 5]
    assert batch.column("author_id").data_ptr() == batch.ids.data_ptr() + 8 * batch.ids.element_size()


def _replace(batch: TimelineBatch, **changes) -> dict:
    fields = dict(kind=batch.kind, offsets=batch.offsets, ids=batch.ids, ts=batch.ts, cats=batch.cats, floats=batch.floats)
    fields.update(changes)
    return fields


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: dict(ids=b.ids[:, :-1].contiguous()), r"TimelineBatch\(implicit\): ids must have shape \(3, 9\), got \(3, 8\)"),
        (lambda b: dict(cats=b.cats[:, 1:].contiguous()), r"cats must have shape \(2, 9\)"),
        (lambda b: dict(floats=b.floats[:1].contiguous()), r"floats must have shape \(2, 9\)"),
        (lambda b: dict(offsets=torch.tensor([0, 4, 8])), r"offsets must start at 0 and end at the number of events 9, got 0 \.\. 8"),
        (lambda b: dict(offsets=torch.tensor([0, 6, 4, 9])), r"offsets must be non-decreasing \(user 1\)"),
        (lambda b: dict(offsets=torch.empty(0, dtype=torch.int64)), r"offsets must have B \+ 1 >= 1 entries"),
        (lambda b: dict(ts=b.ts.int()), r"ts must be torch.int64, got torch.int32"),
        (lambda b: dict(ids=b.ids.int()), r"ids must be torch.int64, got torch.int32"),
        (lambda b: dict(cats=b.cats.to(torch.int16)), r"cats must be torch.int8, got torch.int16"),
        (lambda b: dict(floats=b.floats.double()), r"floats must be torch.float32, got torch.float64"),
        (lambda b: dict(offsets=b.offsets.int()), r"offsets must be torch.int64"),
        (lambda b: dict(ts=b.ts[None]), r"ts must be 1-D"),
        (lambda b: dict(ids=b.ids.t().contiguous().t()), r"ids must be contiguous"),
        (lambda b: dict(kind="sideways"), r"kind must be one of"),
    ],
)
def test_validation_errors(change, message):
    batch = random_batch("implicit", [2, 4, 3], random_request_ts(3))
    with pytest.raises(TimelineError, match=message):
        TimelineBatch(**_replace(batch, **change(batch)))


def test_ts_must_ascend_within_a_user():
    batch = random_batch("explicit", [3, 4], random_request_ts(2))
    ts = batch.ts.clone()
    ts[5] = ts[4] - 1
    with pytest.raises(TimelineError, match=r"ts must be ascending within each user \(user 1, event 2\)"):
        TimelineBatch(**_replace(batch, ts=ts))
    # a decrease where a new user starts is fine, also after an empty user
    ts = torch.tensor([10, 20, 30, 1, 2, 3, 4])
    TimelineBatch(**_replace(batch, ts=ts))
    TimelineBatch(**_replace(batch, ts=ts, offsets=torch.tensor([0, 3, 3, 7])))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("field", ["video_duration", "dwell_time"])
def test_float_fields_must_be_finite(field, bad):
    offsets, cols = _columns("implicit", [2, 3])
    cols[field][3] = bad
    with pytest.raises(TimelineError, match=rf"{field} must be finite \(event 3\)"):
        TimelineBatch.from_columns("implicit", offsets, **cols)


def test_float_fields_must_be_non_negative():
    offsets, cols = _columns("implicit", [2, 3])
    cols["dwell_time"][1] = -1.0
    with pytest.raises(TimelineError, match=r"dwell_time must be >= 0 \(event 1\)"):
        TimelineBatch.from_columns("implicit", offsets, **cols)


@pytest.mark.parametrize("value", [64, -1, 100])
@pytest.mark.parametrize("kind, field", [("explicit", "action_type"), ("explicit", "surface"), ("implicit", "media_type")])
def test_cat_values_out_of_range(kind, field, value):
    offsets, cols = _columns(kind, [4, 1])
    cols[field] = cols[field].to(torch.int16)
    cols[field][2] = value
    with pytest.raises(TimelineError, match=rf"{field} values must lie in \[0, 63\]"):
        TimelineBatch.from_columns(kind, offsets, **cols)
    batch = random_batch(kind, [4, 1], random_request_ts(2))
    cats = batch.cats.clone()
    cats[CAT_FIELDS[kind].index(field), 2] = value if value < 128 else -1
    with pytest.raises(TimelineError, match=rf"{field} values must lie in \[0, 63\]"):
        TimelineBatch(**_replace(batch, cats=cats))


def test_from_columns_errors():
    offsets, cols = _columns("explicit", [2, 2])
    with pytest.raises(TimelineError, match=r"missing columns \['surface'\], unknown columns \['dwell_time'\]"):
        TimelineBatch.from_columns("explicit", offsets, **{**{k: v for k, v in cols.items() if k != "surface"}, "dwell_time": cols["ts"].float()})
    with pytest.raises(TimelineError, match=r"column media_id must be torch.int64, got torch.float32"):
        TimelineBatch.from_columns("explicit", offsets, **{**cols, "media_id": cols["media_id"].float()})
    with pytest.raises(TimelineError, match=r"column topic_id must be 1-D with 4 events, got \(3,\)"):
        TimelineBatch.from_columns("explicit", offsets, **{**cols, "topic_id": cols["topic_id"][:3]})


def test_empty():
    for kind in ("explicit", "implicit"):
        batch = TimelineBatch.empty(kind, num_users=3)
        assert batch.num_users == 3 and batch.num_events == 0 and batch.lengths.tolist() == [0, 0, 0]


@pytest.mark.parametrize("kind", ["explicit", "implicit"])
def test_cut_keeps_events_before_the_cutoff(kind):
    lengths = [0, 17, 1, 40]
    request_ts = random_request_ts(len(lengths))
    batch = random_batch(kind, lengths, request_ts)
    cutoff = request_ts - 86_400
    cut = batch.cut(cutoff)
    expected = {name: [] for name in batch.fields()}
    expected_lengths = []
    for b in range(batch.num_users):
        lo, hi = int(batch.offsets[b]), int(batch.offsets[b + 1])
        keep = [e for e in range(lo, hi) if int(batch.ts[e]) < int(cutoff[b])]
        expected_lengths.append(len(keep))
        for name in batch.fields():
            expected[name].extend(batch.column(name)[keep].tolist())
    assert cut.lengths.tolist() == expected_lengths
    for name in batch.fields():
        assert cut.column(name).tolist() == expected[name], name
    with pytest.raises(TimelineError, match=r"cutoff must have shape \(4,\)"):
        batch.cut(cutoff[:2])


# TorchRec interop ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["explicit", "implicit"])
@pytest.mark.parametrize("lengths", [[5, 0, 12], [1], [0, 0]])
def test_kjt_round_trip_shares_storage(kind, lengths):
    pytest.importorskip("torchrec")
    batch = random_batch(kind, lengths, random_request_ts(len(lengths)))
    kjt = batch.to_kjt()
    assert kjt.keys() == list(ID_FIELDS)
    assert kjt.lengths().tolist() == lengths * len(ID_FIELDS)
    assert kjt.values().data_ptr() == batch.ids.data_ptr()
    for name, jt in kjt.to_dict().items():
        assert torch.equal(jt.values(), batch.column(name))
    back = TimelineBatch.from_kjt(kind, kjt, ts=batch.ts, cats=batch.cats, floats=batch.floats)
    assert back.ids.data_ptr() == kjt.values().data_ptr()
    for name in batch.fields():
        assert torch.equal(back.column(name), batch.column(name))
    assert torch.equal(back.offsets, batch.offsets)


def test_from_kjt_errors():
    pytest.importorskip("torchrec")
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    batch = random_batch("explicit", [2, 3], random_request_ts(2))
    kjt = KeyedJaggedTensor(keys=["author_id", "media_id", "topic_id"], values=batch.ids.reshape(-1), lengths=batch.lengths.repeat(3))
    with pytest.raises(TimelineError, match=r"keys must be \['media_id', 'author_id', 'topic_id'\]"):
        TimelineBatch.from_kjt("explicit", kjt, batch.ts, batch.cats, batch.floats)
    lengths = torch.tensor([2, 3, 3, 2, 2, 3])
    kjt = KeyedJaggedTensor(keys=list(ID_FIELDS), values=batch.ids.reshape(-1), lengths=lengths)
    with pytest.raises(TimelineError, match=r"every id field must have the same lengths per user"):
        TimelineBatch.from_kjt("explicit", kjt, batch.ts, batch.cats, batch.floats)
