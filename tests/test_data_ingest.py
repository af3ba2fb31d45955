"""Ingestion of interaction logs (dv365.data.ingestion) and the data commands."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dv365.cli import main
from dv365.data import DataError, Loader, TASKS, ingest, open_dataset
from dv365.data.ingestion import ACTION_TYPES, IngestWarning, _examples, parse_delimiter

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
# tiny logs leave most histories empty under the 24 h gap: that warning is tested on its own below
pytestmark = pytest.mark.filterwarnings("ignore:.*no event more than 24 h:dv365.data.ingestion.IngestWarning")
RMAP = {"user": "userId", "item": "movieId", "timestamp": "timestamp", "rating": "rating"}


@pytest.fixture
def ratings(tmp_path):
    p = tmp_path / "ratings.csv"
    p.write_text(RATINGS)
    return p


def test_ratings_log(ratings, tmp_path):
    rep = ingest(ratings, tmp_path / "ds", RMAP, like_threshold=4, max_bad_fraction=0.5)
    assert rep.rows_read == 9 and rep.rows_kept == 5
    assert rep.bad_rows == {"missing_rating": 1, "missing_item": 1, "bad_rating": 1, "bad_timestamp": 1}
    # line numbers of the file (the header is line 1) and the raw values of the mapped columns
    assert rep.bad_samples["missing_rating"] == ["line 6: userId='2' movieId='10' timestamp='1260759200' rating=None"]
    assert rep.bad_samples["bad_timestamp"] == ["line 10: userId='3' movieId='7' timestamp='notatime' rating='1.0'"]
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
    ingest(ratings, tmp_path / "ds", RMAP, like_threshold=4, max_bad_fraction=0.5)
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
    with pytest.warns(IngestWarning, match=r"6 of 6 timestamps \(100%\) lie outside 1990..2100"):
        rep = ingest(tmp_path / "log.parquet", tmp_path / "ds",
                     {"user": "uid", "item": "iid", "author": "aid", "action": "act", "timestamp": "t", "duration": "dur",
                      "dwell": "dwell"}, examples_per_user=1, max_bad_fraction=0.25)
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
                 "user=userId,item=movieId,timestamp=timestamp,rating=rating", "--like-threshold", "4",
                 "--max-bad-fraction", "0.5", "--quiet"]) == 0
    assert "bad rows: bad_rating: 1" in capsys.readouterr().out
    assert main(["ingest", "--input", str(ratings), "--out", str(tmp_path / "j"), "--map", "user=userId"]) == 2


def _write(tmp_path, text, name="log.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_float_timestamps_and_units(tmp_path):
    # integral floats as pandas writes them, scientific notation, a fraction (floored to the second)
    p = _write(tmp_path, "u,i,r,t\n1,10,5,881250949.0\n1,11,3,8.8125095e8\n2,10,4,881250960.75\n2,12,1,881250961\n")
    rep = ingest(p, tmp_path / "ds", {"user": "u", "item": "i", "rating": "r", "timestamp": "t"}, like_threshold=4)
    assert rep.rows_kept == 4 and not rep.bad_rows and not [w for w in rep.warnings if "1990" in w]
    ds = open_dataset(tmp_path / "ds")
    ts = sorted(np.concatenate([ds.read_table(0, k)["ts"] for k in ("explicit", "implicit")]).tolist())
    assert ts == [881250949, 881250950, 881250960, 881250961]
    # milliseconds: the same instants with --time-unit ms, and a warning naming the unit when it is wrong
    q = _write(tmp_path, "u,i,r,t\n1,10,5,881250949000\n1,11,3,881250950000.0\n", "ms.csv")
    m = {"user": "u", "item": "i", "rating": "r", "timestamp": "t"}
    rep = ingest(q, tmp_path / "ms", m, like_threshold=4, time_unit="ms")
    assert not [w for w in rep.warnings if "1990" in w]
    with pytest.warns(IngestWarning, match=r"2 of 2 timestamps .* outside 1990..2100 .*time_unit='ms' would put them in 1997-12-04"):
        rep = ingest(q, tmp_path / "s", m, like_threshold=4)
    assert rep.rows_kept == 2  # kept: the warning does not drop data
    s = _write(tmp_path, "u,i,r,t\n1,10,5,881250949\n1,11,3,881250950\n", "s.csv")
    with pytest.warns(IngestWarning, match=r"span 1970-01-11 .. 1970-01-11 with time_unit='ms'\); time_unit='s'"):
        ingest(s, tmp_path / "s2", m, like_threshold=4, time_unit="ms")


def test_nothing_kept_is_an_error(tmp_path):
    m = {"user": "u", "item": "i", "rating": "r", "timestamp": "t"}
    header_only = _write(tmp_path, "u,i,r,t\n", "h.csv")
    with pytest.raises(DataError, match="no data rows"):
        ingest(header_only, tmp_path / "a", m, like_threshold=4)
    dates = _write(tmp_path, "u,i,r,t\n1,10,5,14/11/2009\n2,10,4,15/11/2009\n", "d.csv")
    with pytest.raises(DataError, match=r"no row was kept: all 2 rows are bad .*\n.*bad_timestamp: 2\n.*line 2: u='1'"):
        ingest(dates, tmp_path / "b", m, like_threshold=4)
    assert not (tmp_path / "b").exists()  # nothing written
    rep = ingest(dates, tmp_path / "c", m, like_threshold=4, time_format="%d/%m/%Y")
    assert rep.rows_kept == 2


def test_max_bad_fraction(tmp_path):
    rows = "".join(f"{k % 3},{k},4,{1_600_000_000 + k}\n" for k in range(8)) + "1,2,x,1600000100\n,2,4,1600000100\n"
    p = _write(tmp_path, "u,i,r,t\n" + rows)
    m = {"user": "u", "item": "i", "rating": "r", "timestamp": "t"}
    with pytest.raises(DataError, match=r"2 of 10 rows \(20.0%\) are bad, more than max_bad_fraction=0.1"):
        ingest(p, tmp_path / "a", m, like_threshold=4)
    rep = ingest(p, tmp_path / "b", m, like_threshold=4, max_bad_fraction=0.2)
    assert rep.rows_kept == 8 and rep.bad_rows == {"bad_rating": 1, "missing_user": 1}
    with pytest.raises(DataError, match=r"max_bad_fraction must be in \[0, 1\], got 2"):
        ingest(p, tmp_path / "c", m, like_threshold=4, max_bad_fraction=2)


@pytest.mark.parametrize("delimiter,given", [("\t", "tab"), ("\t", "\\t"), (";", ";"), ("|", "|")])
def test_delimiters(tmp_path, delimiter, given):
    body = [("1", "10", "4.5", "1600000000"), ("1", "11", "2", "1600000100"), ("2", "10", "5", "1600000200")]
    ref = _write(tmp_path, "\n".join(",".join(r) for r in [("u", "i", "r", "t"), *body]) + "\n", "ref.csv")
    p = _write(tmp_path, "\n".join(delimiter.join(r) for r in [("u", "i", "r", "t"), *body]) + "\n", "log.txt")
    m = {"user": "u", "item": "i", "rating": "r", "timestamp": "t"}
    a = ingest(ref, tmp_path / "a", m, like_threshold=4)
    b = ingest(p, tmp_path / "b", m, like_threshold=4, delimiter=given)
    assert a.as_dict() == b.as_dict() and b.rows_kept == 3
    assert open_dataset(tmp_path / "a").manifest["shards"] == open_dataset(tmp_path / "b").manifest["shards"]
    with pytest.raises(DataError, match=r"header looks .*-separated: pass delimiter="):
        ingest(p, tmp_path / "c", m, like_threshold=4)
    assert parse_delimiter("tab") == "\t"
    with pytest.raises(DataError, match="delimiter must be one character"):
        parse_delimiter(";;")


def test_ragged_rows_headers_and_blank_lines(tmp_path):
    text = ("u,i,r,t\n"
            "1,10,5,1600000000\n"     # line 2
            "1,11,5\n"                # line 3: too few fields
            "\n"                      # line 4: blank
            "1,12,4,1600000100,9\n"   # line 5: too many fields
            "u,i,r,t\n"               # line 6: a repeated header (concatenated files)
            "2,10,x,1600000200\n"     # line 7: bad rating
            + "".join(f"{k},{k},4,{1600000300 + k}\n" for k in range(3, 20)))
    p = _write(tmp_path, text)
    rep = ingest(p, tmp_path / "ds", {"user": "u", "item": "i", "rating": "r", "timestamp": "t"}, like_threshold=4,
                 max_bad_fraction=0.2)
    assert rep.header_rows == 1 and rep.blank_lines == 1
    assert rep.rows_read == 21 and rep.rows_kept == 18
    assert rep.bad_rows == {"ragged_row": 2, "bad_rating": 1}
    assert rep.bad_samples["ragged_row"] == ["line 3: '1,11,5'", "line 5: '1,12,4,1600000100,9'"]
    assert rep.bad_samples["bad_rating"] == ["line 7: u='2' i='10' r='x' t='1600000200'"]
    assert open_dataset(tmp_path / "ds").num_users == 18


def test_empty_histories_warn(tmp_path):
    # every user rated everything within one hour: under a 24 h gap no example has any history
    rows = "".join(f"{u},{k},4,{1_600_000_000 + 60 * k}\n" for u in range(5) for k in range(6))
    p = _write(tmp_path, "u,i,r,t\n" + rows)
    m = {"user": "u", "item": "i", "rating": "r", "timestamp": "t"}
    with pytest.warns(IngestWarning, match=r"100% of examples have no event more than 24 h before .*gap=86400"):
        rep = ingest(p, tmp_path / "a", m, like_threshold=4)
    assert rep.empty_history_share == {"0": 0.0, "3600": 1.0, "86400": 1.0}
    # spread over weeks: no warning; gap 0 leaves only each user's first event without history
    rows = "".join(f"{u},{k},4,{1_600_000_000 + 7 * 86_400 * k}\n" for u in range(5) for k in range(6))
    rep = ingest(_write(tmp_path, "u,i,r,t\n" + rows, "b.csv"), tmp_path / "b", m, like_threshold=4,
                 examples_per_user=6)
    assert not rep.warnings and rep.empty_history_share == {"0": round(1 / 6, 4), "3600": round(1 / 6, 4),
                                                             "86400": round(1 / 6, 4)}
    ds = open_dataset(tmp_path / "b")
    lengths = [int(b.explicit.lengths.sum()) for b in Loader(ds, batch_size=30, gap=86_400, fill_missing=0.0)]
    assert lengths == [sum(range(6)) * 5]  # the loader agrees: k earlier events for the k-th example


def _labels_loop(ev, sel, observed, window):
    """The per-example definition of the labels, one example at a time (the independent oracle)."""
    labels = {}
    task_of = {"like": "liked", "comment": "comment", "reshare": "reshare", "save": "save", "follow": "follow",
               "profile_visit": "profile_visit", "external_share": "external_share"}
    for j, i in enumerate(sel):
        for e in np.flatnonzero(ev["explicit"]):
            if (ev["user_id"][e] == ev["user_id"][i] and ev["media_id"][e] == ev["media_id"][i]
                    and ev["ts"][i] <= ev["ts"][e] <= ev["ts"][i] + window):
                task = task_of.get(ACTION_TYPES[ev["action_type"][e]])
                if task in observed:
                    labels[(j, TASKS.index(task))] = 1.0
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_match_a_loop(seed):
    rng = np.random.default_rng(seed)
    n = 400
    user = np.sort(rng.integers(0, 12, n))
    ts = np.empty(n, dtype=np.int64)
    for u in np.unique(user):  # sorted by (user, ts), with ties
        k = user == u
        ts[k] = np.sort(rng.integers(0, 50, k.sum()))
    ev = {"user_id": user, "ts": ts, "media_id": rng.integers(0, 6, n), "author_id": np.zeros(n, np.int64),
          "topic_id": np.zeros(n, np.int64), "media_type": np.zeros(n, np.int8), "surface": np.zeros(n, np.int8),
          "action_type": rng.integers(0, len(ACTION_TYPES), n).astype(np.int8),
          "video_duration": np.full(n, np.nan, np.float32), "dwell_time": np.full(n, np.nan, np.float32),
          "explicit": rng.random(n) < 0.6}
    k, window = 5, 7
    cols = _examples(ev, {"action": "a"}, False, k, window)
    sel = [i for i in range(n) if (user[i + 1:] == user[i]).sum() < k]
    assert cols["user_id"].tolist() == user[sel].tolist()
    observed = {"liked", "comment", "reshare", "save", "follow", "profile_visit", "external_share"}
    expect = _labels_loop(ev, sel, observed, window)
    for j in range(len(sel)):
        for task in observed:
            t = TASKS.index(task)
            assert cols[f"label_{task}"][j] == expect.get((j, t), 0.0), (j, task)
    assert len(expect) >= 5  # the case is not trivial


def test_cli_ingest_flags(tmp_path, capsys):
    p = _write(tmp_path, "u;i;r;t\n1;10;5;881250949.0\n1;11;3;881250950.0\n")
    base = ["ingest", "--input", str(p), "--map", "user=u,item=i,rating=r,timestamp=t", "--like-threshold", "4",
            "--quiet"]
    assert main(base + ["--out", str(tmp_path / "a"), "--delimiter", ";"]) == 0
    assert "rows read 2, kept 2, bad 0" in capsys.readouterr().out
    assert main(base + ["--out", str(tmp_path / "a"), "--delimiter", ";"]) == 2  # exists, no --overwrite
    assert "pass --overwrite to replace it" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "b")]) == 2  # wrong delimiter: a clear hint, exit 2
    err = capsys.readouterr().err
    assert "dv365 ingest: error:" in err and "pass --delimiter ';'" in err and "Traceback" not in err
    q = _write(tmp_path, "u,i,r,t\n1,10,5,x\n1,11,3,1600000000\n", "q.csv")
    base[2] = str(q)
    assert main(base + ["--out", str(tmp_path / "c")]) == 2
    assert "more than --max-bad-fraction 0.1" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "c"), "--max-bad-fraction", "0.5"]) == 0


def test_progress_bar(tmp_path, capsys):
    p = _write(tmp_path, "u,i,r,t\n" + "".join(f"{k % 4},{k},4,{1_600_000_000 + 86_400 * k}\n" for k in range(40)))
    m = {"user": "u", "item": "i", "rating": "r", "timestamp": "t"}
    ingest(p, tmp_path / "a", m, like_threshold=4, users_per_shard=2, progress=True)
    err = capsys.readouterr().err
    assert "dv365 ingest:" in err and "writing shards" in err  # tqdm on stderr, one step per stage and shard
    ingest(p, tmp_path / "b", m, like_threshold=4)
    assert capsys.readouterr().err == ""  # off by default in the Python API


def test_unknown_names_list_the_accepted_ones(tmp_path):
    # a log in its own vocabulary (home_feed, hide, live): the report says which names exist, so that the user can
    # rewrite theirs; accepted names match in any case
    rows = [("1", "10", 1_600_000_000 + k, act, surf, media) for k, (act, surf, media) in enumerate(
        [("view", "FEED", "video"), ("Share", "reels", "photo"), ("hide", "feed", "video"),
         ("view", "home_feed", "video"), ("like", "feed", "live")] + [("impression", "explore", "carousel")] * 30)]
    p = _write(tmp_path, "u,i,t,a,s,m\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    rep = ingest(p, tmp_path / "ds", {"user": "u", "item": "i", "timestamp": "t", "action": "a", "surface": "s",
                                      "media_type": "m"})
    assert rep.bad_rows == {"unknown_action": 1, "unknown_surface": 1, "unknown_media_type": 1}
    text = str(rep)
    assert ("bad rows: unknown_surface: 1 (accepted, any case: reels, feed, explore, stories)") in text
    assert "bad rows: unknown_media_type: 1 (accepted, any case: video, photo, carousel)" in text
    line = next(x for x in text.splitlines() if x.startswith("bad rows: unknown_action"))
    for name in (*ACTION_TYPES, "share", "view", "impression"):
        assert name in line
    assert "line 4: u='1' i='10' t='1600000002' a='hide'" in text


def test_a_column_mixing_seconds_and_milliseconds(tmp_path):
    # one client logged milliseconds: kept, its rows would be the dataset's latest time (the year 52000) and requests
    # no history precedes; they are bad rows of their own reason, with a hint, and the rest is ingested as seconds
    t0 = 1_700_000_000
    rows = [(u, 10 + k, t0 + 86_400 * k) for u in range(4) for k in range(10)]
    rows += [(4, 50, (t0 + 5) * 1000), (4, 51, (t0 + 9) * 1000)]
    p = _write(tmp_path, "u,i,t\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    rep = ingest(p, tmp_path / "ds", {"user": "u", "item": "i", "timestamp": "t"})
    assert rep.bad_rows == {"implausible_timestamp": 2} and rep.rows_kept == 40 and rep.users == 4
    assert not [w for w in rep.warnings if "1990" in w]
    assert "implausible_timestamp: 2 (outside 1990..2100 while the other rows are inside" in str(rep)
    assert rep.bad_samples["implausible_timestamp"][0] == f"line 42: u='4' i='50' t='{(t0 + 5) * 1000}'"
    assert open_dataset(tmp_path / "ds").manifest["time_range"]["max_ts"] == t0 + 86_400 * 9
    # a column wholly in the other unit is one mistake, not a mix: kept, and the warning names the unit
    q = _write(tmp_path, "u,i,t\n" + "".join(f"{u},{i},{t * 1000}\n" for u, i, t in rows[:40]), "ms.csv")
    with pytest.warns(IngestWarning, match="time_unit='ms' would put them in 2023"):
        rep = ingest(q, tmp_path / "ms", {"user": "u", "item": "i", "timestamp": "t"})
    assert rep.rows_kept == 40 and not rep.bad_rows


def test_dwell_in_milliseconds_warns(tmp_path):
    # watch time exported in ms next to durations in s: kept as given (nothing invented), with a warning
    t0 = 1_700_000_000
    rng = np.random.default_rng(int(torch.randint(0, 10**6, ()).item()))
    dur = rng.uniform(5, 60, 40).round(1)
    dwell_s = (dur * rng.uniform(0.05, 1.5, 40)).round(3)
    def log(dwell, name):
        return _write(tmp_path, "u,i,t,a,dur,dw\n" + "".join(
            f"{k % 4},{k},{t0 + 86_400 * k},view,{dur[k]},{dwell[k]}\n" for k in range(40)), name)
    m = {"user": "u", "item": "i", "timestamp": "t", "action": "a", "duration": "dur", "dwell": "dw"}
    rep = ingest(log(dwell_s, "s.csv"), tmp_path / "s", m)
    assert not [w for w in rep.warnings if "dwell" in w]
    with pytest.warns(IngestWarning, match=r"dwell time is more than 10x the duration for 40 of 40 implicit events"):
        rep = ingest(log((dwell_s * 1000).round(), "ms.csv"), tmp_path / "ms", m)
    assert rep.rows_kept == 40 and "divide a column in milliseconds by 1000" in rep.warnings[-1]
    assert np.nanmax(open_dataset(tmp_path / "ms").read_table(0, "implicit")["dwell_time"]) > 1000


def test_ingest_stays_the_function_whatever_was_imported_first(tmp_path):
    # importing a submodule binds it as an attribute of its package: a module named dv365.data.ingest, imported
    # first (say for IngestWarning), made `from dv365.data import ingest` the module ("'module' object is not
    # callable"); the module is dv365.data.ingestion, so the name stays the function
    import subprocess
    import sys

    p = _write(tmp_path, "u,i,t\n1,10,1600000000\n2,11,1600000100\n")
    code = ("import warnings\nfrom dv365.data.ingestion import IngestWarning\nimport dv365.data.ingestion\n"
            "warnings.simplefilter('ignore', IngestWarning)\nfrom dv365.data import IngestWarning as W, ingest\n"
            "assert W is IngestWarning\n"
            f"rep = ingest({str(p)!r}, {str(tmp_path / 'ds')!r}, {{'user': 'u', 'item': 'i', 'timestamp': 't'}})\n"
            "print('kept', rep.rows_kept, type(ingest).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["kept", "2", "function"]


def _vocab(ds, name: str) -> dict[str, int]:
    t = pq.read_table(ds / "vocab" / f"{name}.parquet")
    return dict(zip(t.column("raw").to_pylist(), t.column("id").to_pylist()))


def _events_by_raw(ds) -> set[tuple]:
    """Every event as (raw user, ts, raw item, raw author, raw topic): comparable across datasets with other ids."""
    inv = {name: {v: k for k, v in _vocab(ds, name).items()} for name in ("users", "items", "authors", "topics")}
    d = open_dataset(ds)
    out = set()
    for k in range(d.num_shards):
        for kind in ("explicit", "implicit"):
            t = d.read_table(k, kind)
            for u, ts, i, a, tp in zip(t["user_id"], t["ts"], t["media_id"], t["author_id"], t["topic_id"]):
                out.add((inv["users"][int(u)], int(ts), inv["items"][int(i)], inv["authors"].get(int(a)),
                         inv["topics"].get(int(tp))))
    return out


def test_vocab_from_keeps_every_id_of_the_earlier_dataset(tmp_path):
    from dv365.refresh import renumbered

    t0 = 1_700_000_000
    rows = [f"u{k % 9},i{(k * 5) % 23},a{k % 4},t{k % 3},{t0 + 3600 * k}\n" for k in range(120)]
    # the next snapshot: the same log sorted another way, without user u8, plus a new user, item, author and topic
    later = sorted((r for r in rows if not r.startswith("u8,")), key=lambda r: r.split(",")[1])
    later += [f"u_new,i_new,a_new,t_new,{t0 + 3600 * (200 + k)}\n" for k in range(3)]
    later.append(f"u0,i_new,a0,t0,{t0 + 3600 * 300}\n")
    head = "user,item,author,topic,ts\n"
    m = {"user": "user", "item": "item", "author": "author", "topic": "topic", "timestamp": "ts"}
    d1, plain, kept = tmp_path / "d1", tmp_path / "plain", tmp_path / "kept"
    ingest(_write(tmp_path, head + "".join(rows), "d1.csv"), d1, m)
    ingest(_write(tmp_path, head + "".join(later), "d2.csv"), plain, m)
    assert renumbered(d1, plain) is not None  # the other order renumbers without vocab_from
    assert main(["ingest", "--input", str(tmp_path / "d2.csv"), "--out", str(kept), "--map",
                 "user=user,item=item,author=author,topic=topic,timestamp=ts", "--vocab-from", str(d1), "--quiet"]) == 0
    assert renumbered(d1, kept) is None
    for name in ("users", "items", "authors", "topics"):
        old, new = _vocab(d1, name), _vocab(kept, name)
        assert {r: new[r] for r in old} == old, name  # every earlier raw id keeps its id ...
    assert _vocab(kept, "users")["u_new"] == 9 and _vocab(kept, "items")["i_new"] == 23  # ... new ones come next
    assert _vocab(kept, "authors")["a_new"] == 5 and _vocab(kept, "topics")["t_new"] == 4  # (from 1: 0 is unknown)
    # the same events, told by raw ids; u8 is still numbered, with an empty history
    assert _events_by_raw(kept) == _events_by_raw(plain)
    assert {e for e in _events_by_raw(d1) if e[0] != "u8"} <= _events_by_raw(kept)
    ds = open_dataset(kept)
    u8 = _vocab(kept, "users")["u8"]
    assert ds.num_users == 10 and ds.shard_users(0)[0] <= u8 < ds.shard_users(0)[1]
    assert not any((ds.read_table(0, kind)["user_id"] == u8).any() for kind in ("explicit", "implicit"))


def test_vocab_from_needs_an_ingested_dataset(tmp_path):
    from dv365.data import generate

    generate(3, seed=0).write(tmp_path / "synth")
    log = _write(tmp_path, "u,i,t\n1,2,1700000000\n")
    with pytest.raises(DataError, match=r"vocab_from .*synth has no vocab/users.parquet: only a dataset written by"):
        ingest(log, tmp_path / "out", {"user": "u", "item": "i", "timestamp": "t"}, vocab_from=tmp_path / "synth")
