"""Ingestion of interaction logs (dv365.data.ingest) and the data commands."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dv365.cli import main
from dv365.data import DataError, Loader, TASKS, ingest, open_dataset

RATINGS = """userId,movieId,rating,timestamp
1,31,2.5,1260759144
1,1029,3.0,1260759179
1,1061,4.0,1260759182
2,31,5.0,1260759100
2,10,,1260759200
x,,4,1260759300
3,5,abc,1260759400
3,6,4.5,2009-11-14T03:00:00
3,7,1.0,notatime
"""
RMAP = {"user": "userId", "item": "movieId", "timestamp": "timestamp", "rating": "rating"}


@pytest.fixture
def ratings(tmp_path):
    p = tmp_path / "ratings.csv"
    p.write_text(RATINGS)
    return p


def test_ratings_log(ratings, tmp_path):
    rep = ingest(ratings, tmp_path / "ds", RMAP, like_threshold=4)
    assert rep.rows_read == 9 and rep.rows_kept == 5
    assert rep.bad_rows == {"missing_rating": 1, "missing_item": 1, "bad_rating": 1, "bad_timestamp": 1}
    assert rep.explicit_events == 3 and rep.implicit_events == 2 and rep.users == 3 and rep.items == 4
    assert rep.missing["video_duration"] == 2 and rep.missing["dwell_time"] == 2
    ds = open_dataset(tmp_path / "ds")
    assert ds.counts["explicit"] == 3 and ds.counts["implicit"] == 2
    imp = ds.read_table(0, "implicit")
    assert np.isnan(imp["video_duration"]).all() and np.isnan(imp["dwell_time"]).all()  # unknown, not invented
    exp = ds.read_table(0, "explicit")
    assert (exp["action_type"] == 0).all()  # like
    assert list(exp["ts"][exp["user_id"] == 1]) == [1260759100]  # raw user "2" is dense id 1
    assert 1258167600 in exp["ts"]  # the ISO timestamp, 2009-11-14T03:00:00Z
    users = pq.read_table(tmp_path / "ds" / "vocab" / "users.parquet").column("raw").to_pylist()
    assert users == ["1", "2", "3"]


def test_loader_demands_fill_for_unknown_floats(ratings, tmp_path):
    ingest(ratings, tmp_path / "ds", RMAP, like_threshold=4)
    ds = open_dataset(tmp_path / "ds")
    with pytest.raises(DataError, match="missing implicit .*pass fill_missing"):
        Loader(ds)
    batches = list(Loader(ds, batch_size=8, gap=0, fill_missing=0.0))
    ex = batches[0].examples
    liked = TASKS.index("liked")
    assert ex.label_mask[:, liked].all() and ex.labels[:, liked].tolist() == [1.0, 1.0, 1.0]
    assert not ex.label_mask[:, TASKS.index("comment")].any() and not ex.watch_time_mask.any()
    assert batches[0].implicit.lengths.tolist() == [2, 0, 0]


def test_action_log_with_durations(tmp_path):
    rows = [
        ("a", "i1", "au1", "view", 100, 30.0, 29.0),
        ("a", "i2", "au1", "view", 200, 10.0, ""),
        ("a", "i1", "au1", "like", 101, "", ""),
        ("a", "i3", "", "impression", 300, 12.0, 1.0),
        ("a", "i3", "au2", "share", 301, "", ""),
        ("b", "i1", "au1", "dance", 50, 1.0, 1.0),
        ("b", "i2", "au1", "view", 60, -3.0, 1.0),
        ("b", "i2", "au1", "comment", 70, "", ""),
    ]
    table = pa.table({name: [str(r[i]) for r in rows] for i, name in
                      enumerate(["uid", "iid", "aid", "act", "t", "dur", "dwell"])})
    pq.write_table(table, tmp_path / "log.parquet")
    rep = ingest(tmp_path / "log.parquet", tmp_path / "ds",
                 {"user": "uid", "item": "iid", "author": "aid", "action": "act", "timestamp": "t", "duration": "dur",
                  "dwell": "dwell"}, examples_per_user=1)
    assert rep.bad_rows == {"unknown_action": 1, "bad_duration": 1}
    assert rep.explicit_events == 3 and rep.implicit_events == 3
    assert rep.missing["dwell_time"] == 1 and rep.missing["author"] == 1
    ds = open_dataset(tmp_path / "ds")
    exp = ds.read_table(0, "explicit")
    assert sorted(exp["action_type"].tolist()) == [0, 1, 2]  # like, comment, reshare
    imp = ds.read_table(0, "implicit")
    assert imp["author_id"].tolist() == [1, 1, 0]  # 0 = unknown author
    ex = ds.read_table(0, "examples")
    # user a's last event is the share of i3 at 301: reshare observed 1, like observed 0
    assert ex["label_reshare"][0] == 1 and ex["label_liked"][0] == 0 and np.isnan(ex["label_video_complete"][0])


def test_input_errors(ratings, tmp_path):
    with pytest.raises(DataError, match=r"column\(s\) \['movie'\] not in"):
        ingest(ratings, tmp_path / "a", {**RMAP, "item": "movie"}, like_threshold=4)
    with pytest.raises(DataError, match="like_threshold is required"):
        ingest(ratings, tmp_path / "b", RMAP)
    with pytest.raises(DataError, match=r"mapping must name the \['timestamp'\]"):
        ingest(ratings, tmp_path / "c", {"user": "userId", "item": "movieId"})
    with pytest.raises(DataError, match="unknown mapping key"):
        ingest(ratings, tmp_path / "d", {**RMAP, "colour": "x"}, like_threshold=4)
    with pytest.raises(DataError, match="does not exist"):
        ingest(tmp_path / "none.csv", tmp_path / "e", RMAP, like_threshold=4)


def test_cli_synth_and_ingest(ratings, tmp_path, capsys):
    seed = str(int(torch.randint(0, 1000, ()).item()))
    args = ["synth", "--users", "10", "--seed", seed, "--mean-length", "500", "--num-items", "5000", "--num-authors",
            "500", "--num-topics", "50", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "s1")]) == 0
    assert main(args + ["--out", str(tmp_path / "s2")]) == 0
    a, b = open_dataset(tmp_path / "s1"), open_dataset(tmp_path / "s2")
    assert a.manifest["shards"] == b.manifest["shards"]  # same seed: same bytes (checksums)
    assert main(["ingest", "--input", str(ratings), "--out", str(tmp_path / "i"), "--map",
                 "user=userId,item=movieId,timestamp=timestamp,rating=rating", "--like-threshold", "4"]) == 0
    assert "bad rows: bad_rating: 1" in capsys.readouterr().out
    assert main(["ingest", "--input", str(ratings), "--out", str(tmp_path / "j"), "--map", "user=userId"]) == 2
