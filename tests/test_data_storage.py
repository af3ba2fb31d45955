"""Parquet storage and loader of UniTi datasets (dv365.data; docs/design.md#uniti-timelines)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dv365.data import DataError, Loader, SynthConfig, TASKS, generate, open_dataset, write_dataset
from dv365.timeline import ACTION_TYPES, EXPLICIT, IMPLICIT

SMALL = SynthConfig(mean_length=2000, num_items=20_000, num_authors=2_000, num_topics=200, users_per_shard=7,
                    examples_per_user=3)


@pytest.fixture
def dataset_dir(tmp_path):
    seed = int(torch.randint(0, 2**31, ()).item())
    gen = generate(17, seed=seed, config=SMALL)
    gen.write(tmp_path / "ds")
    return tmp_path / "ds", gen


def test_round_trip(dataset_dir):
    path, gen = dataset_dir
    ds = open_dataset(path)
    assert ds.num_users == 17 and ds.num_shards == 3
    total = {EXPLICIT: 0, IMPLICIT: 0, "examples": 0}
    for k, shard in enumerate(gen):
        back = ds.read_shard(k)
        assert (back.first_user, back.end_user) == (shard.first_user, shard.end_user)
        for name in total:
            a, b = shard.table(name), back.table(name)
            assert a.keys() == b.keys()
            for col in a:
                np.testing.assert_array_equal(a[col], b[col], err_msg=f"{name}.{col}")
            total[name] += a["user_id"].size
    assert ds.counts == total
    items = ds.read_items()
    np.testing.assert_array_equal(items["author_id"], gen.items["author_id"])
    m = ds.manifest
    assert m["schema_version"] == 1 and m["source"]["seed"] == gen.seed
    assert m["time_range"]["min_ts"] <= m["time_range"]["max_ts"]
    assert m["vocab_sizes"]["media_id"] == SMALL.num_items


def test_manifest_refuses_overwrite(dataset_dir):
    path, gen = dataset_dir
    with pytest.raises(DataError, match="already holds a dataset"):
        gen.write(path)


def test_truncated_file(dataset_dir):
    path, _ = dataset_dir
    f = path / "implicit" / "part-00001.parquet"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or rewritten"):
        open_dataset(path)


def test_corrupted_file(dataset_dir):
    path, _ = dataset_dir
    f = path / "explicit" / "part-00000.parquet"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    ds = open_dataset(path)
    with pytest.raises(DataError, match="does not match its manifest checksum"):
        ds.read_table(0, EXPLICIT)
    with pytest.raises(DataError, match="checksum"):
        ds.verify()


def test_not_parquet(dataset_dir):
    path, _ = dataset_dir
    f = path / "explicit" / "part-00000.parquet"
    size = f.stat().st_size
    f.write_bytes(b"x" * size)
    with pytest.raises(DataError, match="not a readable Parquet file"):
        open_dataset(path, verify=False).read_table(0, EXPLICIT)


def _rewrite(path, k, name, fn):
    """Rewrite one file through ``fn(table)`` and fix the manifest so only the schema check can object."""
    f = path / name / f"part-{k:05d}.parquet"
    pq.write_table(fn(pq.read_table(f)), f)
    m = json.loads((path / "manifest.json").read_text())
    m["shards"][k]["files"][name]["bytes"] = f.stat().st_size
    (path / "manifest.json").write_text(json.dumps(m))


def test_missing_column(dataset_dir):
    path, _ = dataset_dir
    _rewrite(path, 0, IMPLICIT, lambda t: t.drop_columns(["dwell_time"]))
    with pytest.raises(DataError, match=r"missing column\(s\) \['dwell_time'\]"):
        open_dataset(path, verify=False).read_table(0, IMPLICIT)


def test_wrong_dtype(dataset_dir):
    path, _ = dataset_dir
    _rewrite(path, 1, EXPLICIT, lambda t: t.set_column(t.schema.get_field_index("ts"), "ts", t.column("ts").cast(pa.float64())))
    with pytest.raises(DataError, match="column 'ts' must be int64, got double"):
        open_dataset(path, verify=False).read_table(1, EXPLICIT)


def test_missing_manifest_and_bad_version(tmp_path, dataset_dir):
    with pytest.raises(DataError, match="has no manifest.json"):
        open_dataset(tmp_path / "nothing")
    path, _ = dataset_dir
    m = json.loads((path / "manifest.json").read_text())
    m["schema_version"] = 99
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="schema_version 99"):
        open_dataset(path)


def test_writer_rejects_unsorted_and_wrong_dtype(tmp_path):
    shard = generate(3, seed=1, config=SMALL).shard(0)
    shard.implicit["ts"] = shard.implicit["ts"][::-1].copy()
    with pytest.raises(DataError, match="rows must be sorted by"):
        write_dataset(tmp_path / "a", [shard])
    shard = generate(3, seed=1, config=SMALL).shard(0)
    shard.explicit["action_type"] = shard.explicit["action_type"].astype(np.int32)
    with pytest.raises(DataError, match="column 'action_type' must be int8"):
        write_dataset(tmp_path / "b", [shard])


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_loader_cuts_and_covers(dataset_dir, batch_size):
    path, gen = dataset_dir
    ds = open_dataset(path)
    gap = int(torch.randint(0, 3 * 86400, ()).item())
    loader = Loader(ds, batch_size=batch_size, gap=gap, shuffle=True, seed=3)
    shards = {k: gen.shard(k) for k in range(len(gen))}
    seen = 0
    for batch in loader:
        ex = batch.examples
        assert ex.labels.shape == (len(ex), len(TASKS)) and ex.labels.dtype == torch.float32
        assert ex.label_mask.all() and ex.watch_time.dtype == torch.float32
        for tl in (batch.explicit, batch.implicit):
            assert tl.num_users == len(ex)
            cutoff = (ex.request_ts - gap).repeat_interleave(tl.lengths)
            assert (tl.ts < cutoff).all()
        # every event before the cut is there: compare counts with the generator's arrays
        for b in range(len(ex)):
            u, req = int(ex.user_id[b]), int(ex.request_ts[b])
            shard = shards[u // SMALL.users_per_shard]
            for kind, tl in ((EXPLICIT, batch.explicit), (IMPLICIT, batch.implicit)):
                cols = shard.table(kind)
                mine = cols["ts"][cols["user_id"] == u]
                assert int(tl.lengths[b]) == int((mine < req - gap).sum())
        seen += len(ex)
    assert seen == ds.counts["examples"] and len(loader) == sum(-(-r // batch_size) for r in
                                                                 (s["files"]["examples"]["rows"] for s in ds.manifest["shards"]))


def test_loader_max_events_keeps_most_recent(dataset_dir):
    path, _ = dataset_dir
    ds = open_dataset(path)
    full = list(Loader(ds, batch_size=8, prefetch=0))
    short = list(Loader(ds, batch_size=8, max_events=50, prefetch=3))
    for a, b in zip(full, short):
        for ta, tb in ((a.implicit, b.implicit), (a.explicit, b.explicit)):
            assert torch.equal(tb.lengths, ta.lengths.clamp(max=50))
            for i in range(ta.num_users):
                ea, eb = ta.offsets[i + 1], tb.offsets[i + 1]
                n = int(tb.lengths[i])
                assert torch.equal(ta.ids[:, ea - n : ea], tb.ids[:, eb - n : eb])


def test_loader_is_deterministic(dataset_dir):
    path, _ = dataset_dir
    ds = open_dataset(path)
    a = [b.examples.request_ts for b in Loader(ds, batch_size=4, shuffle=True, seed=5)]
    b = [b.examples.request_ts for b in Loader(ds, batch_size=4, shuffle=True, seed=5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    loader = Loader(ds, batch_size=4, shuffle=True, seed=5)
    loader.set_epoch(1)
    c = [b.examples.request_ts for b in loader]
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_loader_error_in_worker_reaches_caller(dataset_dir):
    path, _ = dataset_dir
    ds = open_dataset(path)
    (path / "examples" / "part-00002.parquet").write_bytes(b"y" * (path / "examples" / "part-00002.parquet").stat().st_size)
    with pytest.raises(DataError, match="checksum"):
        for _ in Loader(ds, batch_size=4, prefetch=2):
            pass


def test_loader_argument_errors(dataset_dir):
    ds = open_dataset(dataset_dir[0])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Loader(ds, batch_size=0)
    with pytest.raises(ValueError, match="gap must be >= 0"):
        Loader(ds, gap=-1)


def test_writer_and_reader_check_value_ranges(tmp_path, dataset_dir):
    shard = generate(3, seed=2, config=SMALL).shard(0)
    shard.explicit["action_type"][0] = len(ACTION_TYPES)
    with pytest.raises(DataError, match="column 'action_type' values must lie in"):
        write_dataset(tmp_path / "a", [shard])
    shard = generate(3, seed=2, config=SMALL).shard(0)
    shard.implicit["dwell_time"][5] = -1.0
    with pytest.raises(DataError, match="column 'dwell_time' must be >= 0"):
        write_dataset(tmp_path / "b", [shard])
    path, _ = dataset_dir
    surface = pa.array(np.full(pq.read_metadata(path / "implicit" / "part-00000.parquet").num_rows, 9, dtype=np.int8))
    _rewrite(path, 0, IMPLICIT, lambda t: t.set_column(t.schema.get_field_index("surface"), "surface", surface))
    with pytest.raises(DataError, match="column 'surface' values must lie in"):
        open_dataset(path, verify=False).read_table(0, IMPLICIT)


def test_loader_batches_pass_validation(dataset_dir):
    ds = open_dataset(dataset_dir[0])
    for trusted, checked in zip(Loader(ds, batch_size=6), Loader(ds, batch_size=6, validate=True)):
        for a, b in ((trusted.explicit, checked.explicit), (trusted.implicit, checked.implicit)):
            a.validate()
            assert torch.equal(a.ids, b.ids) and torch.equal(a.floats, b.floats) and torch.equal(a.offsets, b.offsets)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_pins_and_moves_to_cuda(dataset_dir):
    ds = open_dataset(dataset_dir[0])
    for batch in Loader(ds, batch_size=4):
        assert batch.implicit.ids.is_pinned() and batch.examples.labels.is_pinned()
        on = batch.to("cuda", non_blocking=True)
        assert on.explicit.device.type == "cuda" and on.examples.watch_time.is_cuda
        on.implicit.validate()
