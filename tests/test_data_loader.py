"""The loaders of dv365.data: rank sharding, exact resume, the per-user export path (paper sections 2.3.3, 2.4)."""

import json
import mmap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from dv365.data import (DataError, Loader, SynthConfig, UserLoader, dataset_fingerprint, generate, open_dataset,
                        users_with_new_events)
import dv365.data.cache as cache_module
import dv365.data.loader as loader_module
import dv365.data.procs
from dv365.data.cache import ShardCache, build_cache, cache_dir
from dv365.timeline import CAT_FIELDS, EXPLICIT, FLOAT_FIELDS, ID_FIELDS, IMPLICIT, TimelineBatch

SMALL = SynthConfig(mean_length=600, num_items=5_000, num_authors=500, num_topics=50, users_per_shard=7,
                    examples_per_user=3)
KINDS = (EXPLICIT, IMPLICIT)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """17 users in shards of 7, 7 and 3 (21, 21 and 9 examples); the generator's arrays are the oracle."""
    path = tmp_path_factory.mktemp("loader") / "ds"
    gen = generate(17, seed=11, config=SMALL)
    gen.write(path)
    return open_dataset(path), [gen.shard(k) for k in range(len(gen))]


def _timeline_equal(a, b):
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("offsets", "ids", "ts", "cats", "floats"))


def _batch_equal(a, b):
    ex = all(torch.equal(getattr(a.examples, f), getattr(b.examples, f)) for f in
             ("user_id", "request_ts", "item_id", "labels", "label_mask", "watch_time"))
    return ex and _timeline_equal(a.explicit, b.explicit) and _timeline_equal(a.implicit, b.implicit)


def _cat_timelines(parts):
    offsets = [parts[0].offsets]
    for p in parts[1:]:
        offsets.append(p.offsets[1:] + offsets[-1][-1])
    return dict(offsets=torch.cat(offsets), ids=torch.cat([p.ids for p in parts], 1), ts=torch.cat([p.ts for p in parts]),
                cats=torch.cat([p.cats for p in parts], 1), floats=torch.cat([p.floats for p in parts], 1))


def _oracle_timeline(shards, kind, user, cutoff, max_events=None):
    """User ``user``'s events with ts < cutoff straight from the generator's arrays (independent of the loader)."""
    cols = shards[user // SMALL.users_per_shard].table(kind)
    keep = (cols["user_id"] == user) & (cols["ts"] < cutoff)
    idx = np.flatnonzero(keep)
    if max_events is not None:
        idx = idx[len(idx) - min(len(idx), max_events):]
    return {name: cols[name][idx] for name in ("ts", *ID_FIELDS, *CAT_FIELDS[kind], *FLOAT_FIELDS[kind])}


# rank sharding ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("world_size,batch_size,drop_last", [(2, 4, False), (3, 2, False), (4, 5, False), (3, 4, True)])
def test_ranks_concatenate_to_the_global_batch(data, world_size, batch_size, drop_last):
    ds, _ = data
    kw = dict(shuffle=True, seed=7, drop_last=drop_last, pin_memory=False)
    single = list(Loader(ds, batch_size * world_size, prefetch=0, **kw))
    ranks = [list(Loader(ds, batch_size, rank=r, world_size=world_size, prefetch=2, **kw)) for r in range(world_size)]
    assert len({len(r) for r in ranks}) == 1, "every rank must yield the same number of batches"
    kept = [b for b in single if len(b) >= world_size]  # a global batch with fewer rows than ranks is dropped
    assert len(ranks[0]) == len(kept) == len(Loader(ds, batch_size, rank=1, world_size=world_size, **kw))
    for i, whole in enumerate(kept):
        parts = [r[i] for r in ranks]
        sizes = [len(p) for p in parts]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= (0 if len(whole) == batch_size * world_size else 1)
        assert sizes == sorted(sizes, reverse=True), "the first ranks take the extra rows"
        for f in ("user_id", "request_ts", "item_id", "labels", "label_mask"):
            assert torch.equal(torch.cat([getattr(p.examples, f) for p in parts]), getattr(whole.examples, f))
        for kind in KINDS:
            cat = _cat_timelines([getattr(p, kind) for p in parts])
            assert all(torch.equal(cat[f], getattr(getattr(whole, kind), f)) for f in cat), (i, kind)


def test_short_global_batch_dropped_on_all_ranks(data):
    ds, _ = data
    # shard 2 has 9 examples: with 4 ranks of 2 the global batches are 8 + 1 rows; the 1-row batch is dropped
    loaders = [Loader(ds, 2, rank=r, world_size=4, shards=[2], prefetch=0) for r in range(4)]
    got = [[b.examples.user_id for b in lo] for lo in loaders]
    assert [len(g) for g in got] == [1, 1, 1, 1] and all(len(g[0]) == 2 for g in got)
    # 3 ranks of 4: 9 rows are one short global batch split 3 + 3 + 3
    assert [len(b) for r in range(3) for b in Loader(ds, 4, rank=r, world_size=3, shards=[2], prefetch=0)] == [3, 3, 3]


def test_rank_argument_errors(data):
    ds, _ = data
    with pytest.raises(ValueError, match=r"rank must lie in \[0, world_size=2\), got 2"):
        Loader(ds, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size must be >= 1, got 0"):
        Loader(ds, world_size=0)
    with pytest.raises(ValueError, match=r"shards \[5\] out of range"):
        Loader(ds, shards=[5])


# exact resume -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shuffle,world_size,mode", [(False, 1, "thread"), (True, 1, "thread"), (True, 2, "thread"),
                                                     (True, 2, "process")])
def test_resume_matches_uninterrupted(data, shuffle, world_size, mode):
    if mode == "process" and not dv365.data.procs.available():
        pytest.skip("worker processes need Linux")
    ds, _ = data
    kw = dict(batch_size=3, shuffle=shuffle, seed=4, world_size=world_size, rank=world_size - 1, pin_memory=False,
              mode=mode, workers=2)
    ref = Loader(ds, **kw)
    ref.set_epoch(2)
    whole = list(ref) + list(ref)  # epochs 2 and 3
    n = len(ref)
    for stop in (0, 1, n // 2, n - 1, n, n + 3):
        first = Loader(ds, prefetch=3, **kw)
        first.set_epoch(2)
        got = []
        while len(got) < stop:
            for b in first:
                got.append(b)
                if len(got) == stop:
                    break
        state = first.state_dict()
        resumed = Loader(ds, prefetch=1, **kw)
        resumed.load_state_dict(state)
        rest = list(resumed)
        if state["batches"] == n:  # stopped on an epoch's last batch: the next iter() finishes it (yields nothing)
            assert rest == []
        if len(got) + len(rest) < len(whole):
            rest += list(resumed)
        assert len(got) + len(rest) == len(whole), stop
        assert all(_batch_equal(a, b) for a, b in zip(got + rest, whole)), stop


def test_state_counts_batches_received_not_prefetched(data):
    ds, _ = data
    loader = Loader(ds, batch_size=2, prefetch=4)
    it = iter(loader)
    next(it)
    import time
    time.sleep(0.2)  # let the prefetcher run ahead
    assert loader.state_dict()["batches"] == 1
    next(it)
    assert loader.state_dict()["batches"] == 2 and loader.state_dict()["epoch"] == 0
    del it
    rest = list(loader)  # iter() continues where the consumer stopped
    assert len(rest) == len(loader) - 2
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["batches"] == 0


def test_resume_skips_without_reading(data, monkeypatch):
    ds, _ = data
    loader = Loader(ds, batch_size=4, prefetch=0)
    per_shard = [-(-21 // 4), -(-21 // 4), -(-9 // 4)]
    state = loader.state_dict()
    state["batches"] = per_shard[0] + per_shard[1] + 1
    fresh = Loader(ds, batch_size=4, prefetch=0)
    fresh.load_state_dict(state)
    reads = []
    orig = loader_module._Shards.get
    monkeypatch.setattr(loader_module._Shards, "get", lambda self, k: reads.append(k) or orig(self, k))
    got = list(fresh)
    assert set(reads) == {2} and len(got) == per_shard[2] - 1
    assert torch.equal(got[0].examples.request_ts, list(Loader(ds, batch_size=4, shards=[2], prefetch=0))[1].examples.request_ts)


def test_set_epoch_and_end_of_epoch(data):
    ds, _ = data
    loader = Loader(ds, batch_size=5, shuffle=True, seed=1)
    e0 = [b.examples.request_ts for b in loader]
    e1 = [b.examples.request_ts for b in loader]  # finishing an epoch moves to the next: a new order
    assert not all(torch.equal(a, b) for a, b in zip(e0, e1))
    loader.set_epoch(0)
    again = list(loader)
    assert len(again) == len(e0) and all(torch.equal(a, b.examples.request_ts) for a, b in zip(e0, again))
    it = iter(loader)
    next(it)
    del it
    loader.set_epoch(1)  # the epoch it is in: keeps the position
    assert loader.state_dict()["batches"] == 1
    loader.set_epoch(3)
    assert loader.state_dict()["batches"] == 0 and loader.epoch == 3


def test_load_state_dict_refuses_other_config_or_data(data, tmp_path):
    ds, _ = data
    state = Loader(ds, batch_size=4).state_dict()
    with pytest.raises(ValueError, match="the state has batch_size=4, this loader batch_size=8"):
        Loader(ds, batch_size=8).load_state_dict(state)
    with pytest.raises(ValueError, match="the state has shuffle=False, this loader shuffle=True"):
        Loader(ds, batch_size=4, shuffle=True).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size"):
        Loader(ds, batch_size=4, world_size=2).load_state_dict(state)
    gen = generate(5, seed=3, config=SMALL)
    gen.write(tmp_path / "other")
    other = open_dataset(tmp_path / "other")
    assert dataset_fingerprint(other) != dataset_fingerprint(ds)
    with pytest.raises(ValueError, match="the state is from a different dataset"):
        Loader(other, batch_size=4).load_state_dict(state)
    with pytest.raises(ValueError, match=r"batches=999 is outside"):
        Loader(ds, batch_size=4).load_state_dict({**state, "batches": 999})
    with pytest.raises(ValueError, match="lacks"):
        Loader(ds, batch_size=4).load_state_dict({"epoch": 0})


# the per-user export path -----------------------------------------------------------------------------
def _check_user_batches(batches, shards, cutoff, gap, users, max_events=None):
    assert torch.equal(torch.cat([b.user_id for b in batches]), torch.as_tensor(users, dtype=torch.int64))
    for b in batches:
        assert torch.equal(b.request_ts, torch.full((len(b),), cutoff + gap, dtype=torch.int64))
        for kind in KINDS:
            tl = getattr(b, kind)
            assert tl.num_users == len(b)
            tl.validate()
            for i, u in enumerate(b.user_id.tolist()):
                want = _oracle_timeline(shards, kind, u, cutoff, max_events)
                lo, hi = int(tl.offsets[i]), int(tl.offsets[i + 1])
                for name, col in want.items():
                    np.testing.assert_array_equal(tl.column(name)[lo:hi].numpy(), col, err_msg=f"user {u} {kind}.{name}")


@pytest.mark.parametrize("cache", [False, None])
def test_user_loader_every_user_cut_at_cutoff(data, cache):
    ds, shards = data
    ts = np.concatenate([s.table(k)["ts"] for s in shards for k in KINDS])
    user_first = {u: min(s.table(k)["ts"][s.table(k)["user_id"] == u].min() for s in shards for k in KINDS
                         if (s.table(k)["user_id"] == u).any()) for u in range(17)}
    cutoff = int(np.median(list(user_first.values())))  # some users have no event before it: empty timelines
    loader = UserLoader(ds, 4, cutoff=cutoff, gap=3600, prefetch=2, pin_memory=False, cache=cache, workers=3)
    batches = list(loader)
    assert len(batches) == len(loader) == 2 + 2 + 1 and loader.num_users == 17
    _check_user_batches(batches, shards, cutoff, 3600, range(17))
    assert any(int(b.implicit.lengths.min()) == 0 for b in batches) and ts.min() < cutoff
    short = list(UserLoader(ds, 5, cutoff=int(ts.max()) + 1, gap=0, max_events=7, prefetch=0, cache=cache))
    _check_user_batches(short, shards, int(ts.max()) + 1, 0, range(17), max_events=7)


def test_user_loader_ranges_subsets_and_resume(data):
    ds, shards = data
    cutoff = int(max(s.table(IMPLICIT)["ts"].max() for s in shards)) - 5 * 86400
    sub = list(UserLoader(ds, 3, cutoff=cutoff, users=(5, 16), prefetch=0))
    _check_user_batches(sub, shards, cutoff, 86400, range(5, 16))
    only = np.array([0, 3, 8, 9, 13, 14, 15, 16])
    got = list(UserLoader(ds, 2, cutoff=cutoff, users=(3, 15), only_users=only))
    _check_user_batches(got, shards, cutoff, 86400, [3, 8, 9, 13, 14])
    assert [len(b) for b in got] == [1, 2, 1, 1]  # batches do not straddle shards: [3] [8, 9] [13] [14]
    whole = list(UserLoader(ds, 2, cutoff=cutoff))
    first = UserLoader(ds, 2, cutoff=cutoff, prefetch=3)
    head = [b for _, b in zip(range(4), first)]
    resumed = UserLoader(ds, 2, cutoff=cutoff)
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    assert len(head) + len(rest) == len(whole)
    assert all(torch.equal(a.user_id, b.user_id) and _timeline_equal(a.implicit, b.implicit) for a, b in zip(head + rest, whole))
    assert resumed.state_dict()["batches"] == 0  # a finished pass starts over
    with pytest.raises(ValueError, match="the state has cutoff="):
        UserLoader(ds, 2, cutoff=cutoff + 1).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="the state has only_users="):
        UserLoader(ds, 2, cutoff=cutoff, only_users=only).load_state_dict(first.state_dict())


def test_user_loader_argument_errors(data):
    ds, _ = data
    with pytest.raises(TypeError, match="cutoff .* is required"):
        UserLoader(ds, 4)
    with pytest.raises(ValueError, match="only_users must be sorted ascending"):
        UserLoader(ds, 4, cutoff=0, only_users=np.array([3, 1]))
    with pytest.raises(ValueError, match=r"users must be a range \(lo, hi\)"):
        UserLoader(ds, 4, cutoff=0, users=(5, 2))


@pytest.mark.parametrize("cache", [False, None])
def test_users_with_new_events(data, cache):
    ds, shards = data
    ts = np.concatenate([s.table(IMPLICIT)["ts"] for s in shards])
    for since in (int(ts.min()), int(np.quantile(ts, 0.99)), int(ts.max()), int(ts.max()) + 1):
        want = sorted({int(u) for s in shards for k in KINDS for u in s.table(k)["user_id"][s.table(k)["ts"] >= since]})
        got = users_with_new_events(ds, since, cache=cache)
        assert got.dtype == np.int64 and got.tolist() == want


@pytest.mark.parametrize("cache", [False, None])
def test_fill_missing_required(tmp_path, cache):
    gen = generate(3, seed=1, config=SMALL)
    shard = gen.shard(0)
    shard.implicit["dwell_time"][2] = np.nan
    from dv365.data import write_dataset
    write_dataset(tmp_path / "d", [shard])
    ds = open_dataset(tmp_path / "d")
    with pytest.raises(DataError, match=r"UserLoader: .* has missing implicit \['dwell_time'\]"):
        UserLoader(ds, cutoff=0)
    b = next(iter(UserLoader(ds, cutoff=2**40, fill_missing=-1.0, cache=cache)))
    assert (b.implicit.column("dwell_time") == -1.0).sum() == 1


# the columnar cache and parallel workers --------------------------------------------------------------
def _all_batches(loader):
    return [b for b in loader]


@pytest.mark.parametrize("workers,prefetch", [(1, 0), (3, 0), (4, 5)])
def test_cache_and_workers_match_parquet_path(data, workers, prefetch):
    ds, _ = data
    kw = dict(shuffle=True, seed=9, max_events=300, pin_memory=False)
    ref = _all_batches(Loader(ds, 5, cache=False, prefetch=0, workers=1, **kw))
    got = _all_batches(Loader(ds, 5, cache=None, prefetch=prefetch, workers=workers, **kw))
    assert len(ref) == len(got) and all(_batch_equal(a, b) for a, b in zip(ref, got))
    for a in got:
        a.implicit.validate()
        a.explicit.validate()


def test_cache_build_layout_and_env(data, tmp_path, monkeypatch):
    ds, _ = data
    root = tmp_path / "c"
    sc = build_cache(ds, root, workers=2)
    assert sc.status()["valid"] == [0, 1, 2] and sc.status()["bytes"] > 0
    entry = json.loads((root / "shard-00001" / "meta.json").read_text())
    assert entry["sources"] == {t: ds.manifest["shards"][1]["files"][t]["sha256"] for t in ("explicit", "implicit", "examples")}
    arrays = sc.get(1)
    base = arrays["implicit.ids"]
    while isinstance(base, np.ndarray):
        base = base.base
    base = base.obj if isinstance(base, memoryview) else base
    assert isinstance(base, mmap.mmap) and arrays["implicit.ids"].dtype == np.int32  # memory-mapped, narrow
    assert arrays["implicit.ts"].dtype == np.uint32 and arrays["implicit.offsets"].shape == (8,)
    assert not [p for p in root.iterdir() if p.is_dir() and p.name.startswith(".")], "no temporary directory is left"
    monkeypatch.setenv("DV365_DATA_CACHE", "0")
    assert cache_dir(ds) is None and cache_dir(ds, True) == ds.path / ".dv365-cache"
    monkeypatch.setenv("DV365_DATA_CACHE", str(tmp_path / "env"))
    assert cache_dir(ds).parent == tmp_path / "env"
    list(UserLoader(ds, 8, cutoff=0))
    assert sorted(p.name for p in cache_dir(ds).iterdir() if p.is_dir()) == ["shard-00000", "shard-00001", "shard-00002"]


def _fresh(tmp_path, name, seed=5, users=9):
    gen = generate(users, seed=seed, config=SMALL)
    gen.write(tmp_path / name, overwrite=True)
    return open_dataset(tmp_path / name), gen


def _implicit_ts(loader):
    return torch.cat([b.implicit.ts for b in loader])


def test_stale_cache_after_new_data_is_rebuilt(tmp_path):
    ds, _ = _fresh(tmp_path, "d", seed=5)
    before = _implicit_ts(UserLoader(ds, 4, cutoff=2**40))
    assert (ds.path / ".dv365-cache" / "shard-00000" / "meta.json").exists()
    ds2, _ = _fresh(tmp_path, "d", seed=6)  # new data written over the dataset: every entry is stale
    after = _implicit_ts(UserLoader(ds2, 4, cutoff=2**40))
    assert torch.equal(after, _implicit_ts(UserLoader(ds2, 4, cutoff=2**40, cache=False)))
    assert not torch.equal(before[: after.numel()], after[: before.numel()])
    # a damaged entry (truncated file) is rebuilt too
    f = ds2.path / ".dv365-cache" / "shard-00001" / "implicit.ids.npy"
    f.write_bytes(f.read_bytes()[:-64])
    assert torch.equal(_implicit_ts(UserLoader(ds2, 4, cutoff=2**40)), after)
    assert f.stat().st_size == json.loads(f.with_name("meta.json").read_text())["bytes"]["implicit.ids"]


def test_cache_build_refuses_corrupted_source(tmp_path):
    ds, _ = _fresh(tmp_path, "d")
    f = ds.path / "implicit" / "part-00001.parquet"
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0x5A
    f.write_bytes(bytes(data))
    with pytest.raises(DataError, match="part-00001.parquet does not match its manifest checksum"):
        list(Loader(ds, 4, workers=2))
    assert not (ds.path / ".dv365-cache" / "shard-00001").exists()


def test_killed_build_leaves_nothing_and_concurrent_builders_agree(tmp_path, monkeypatch):
    ds, _ = _fresh(tmp_path, "d")
    root = tmp_path / "c"
    calls = []

    def dying_save(path, arr):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed mid-build
        return real_save(path, arr)

    real_save = np.save
    monkeypatch.setattr(cache_module.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ShardCache(ds, root).get(0)
    monkeypatch.setattr(cache_module.np, "save", real_save)
    assert [p for p in root.iterdir() if p.is_dir()] == []
    # builders of one entry at once (separate objects, like ranks: only the file lock orders them; flock excludes
    # separate opens of the lock file in one process as between processes): one decodes, the others load its entry
    decoded = []
    real_decode = cache_module.decode_shard
    monkeypatch.setattr(cache_module, "decode_shard", lambda d, k: decoded.append(k) or real_decode(d, k))
    caches = [ShardCache(ds, root) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda c: c.get(1)["implicit.ts"][:].copy(), caches))
    assert all(np.array_equal(got[0], g) for g in got) and decoded == [1]
    assert ShardCache(ds, root).load(1) is not None
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["shard-00001"]


def test_wide_types_fall_back_to_int64(tmp_path):
    """A shard spanning more than 2^32 s, or an id >= 2^31, is cached with int64 columns and loads the same."""
    gen = generate(4, seed=2, config=SMALL)
    shard = gen.shard(0)
    for kind in KINDS:
        t = shard.table(kind)
        t["ts"] = np.where(t["user_id"] == 2, t["ts"] + (1 << 33), t["ts"])  # per-user order is kept
    shard.implicit["media_id"][3] = 1 << 40
    from dv365.data import write_dataset
    write_dataset(tmp_path / "w", [shard])
    ds = open_dataset(tmp_path / "w")
    arrays = build_cache(ds, tmp_path / "c").get(0)
    assert arrays["implicit.ts"].dtype == np.int64 and arrays["implicit.ids"].dtype == np.int64
    assert arrays["explicit.ids"].dtype == np.int32
    for cutoff in (int(shard.implicit["ts"].min()) + 86400 * 100, int(shard.implicit["ts"].max()) + 1):
        batches = list(UserLoader(ds, 3, cutoff=cutoff, gap=0, cache=tmp_path / "c"))
        _check_user_batches(batches, [shard], cutoff, 0, range(4))
    a = list(Loader(ds, 3, cache=tmp_path / "c", shuffle=True))
    b = list(Loader(ds, 3, cache=False, shuffle=True))
    assert all(_batch_equal(x, y) for x, y in zip(a, b))


def test_pinned_batches_skip_validation(data, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("pinned memory needs CUDA")
    ds, _ = data
    b = next(iter(Loader(ds, 4, pin_memory=True)))
    assert b.implicit.ids.is_pinned() and b.implicit.offsets.is_pinned() and b.examples.labels.is_pinned()
    monkeypatch.setattr(TimelineBatch, "validate", lambda self: pytest.fail("re-validated a trusted batch"))
    on = b.to("cuda", non_blocking=True)
    assert on.implicit.device.type == "cuda"


def test_to_and_pin_memory_do_not_revalidate(data, monkeypatch):
    ds, _ = data
    b = next(iter(UserLoader(ds, 4, cutoff=2**40, pin_memory=False)))
    monkeypatch.setattr(TimelineBatch, "validate", lambda self: pytest.fail("re-validated a trusted batch"))
    moved = b.to("cpu")
    assert _timeline_equal(moved.implicit, b.implicit)


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_reused_memory_never_overwrites_a_held_batch(data, mode):
    ds, _ = data
    ref = list(UserLoader(ds, 1, cutoff=2**40, cache=False, prefetch=0, pin_memory=False))
    loader = UserLoader(ds, 1, cutoff=2**40, workers=2, prefetch=1, pin_memory=False, mode=mode)
    held = {}
    for i, b in enumerate(loader):
        assert _timeline_equal(b.implicit, ref[i].implicit) and _timeline_equal(b.explicit, ref[i].explicit)
        if i % 3 == 0:
            held[i] = b  # kept while later batches are built; the others are dropped and their memory reused
    for i, b in held.items():
        assert _timeline_equal(b.implicit, ref[i].implicit) and _timeline_equal(b.explicit, ref[i].explicit), i
    if mode == "thread":
        pool = loader._arenas
        assert 1 <= len(pool.arenas) <= pool.keep < len(ref)
    else:  # the held batches' arenas plus those in flight: the dropped ones were reused
        # (+ 3 in flight, + the batch the consumer and the loader's frame still reference)
        assert len(held) < len(loader._pool.arenas) <= len(held) + 3 + 2 < len(ref)
        loader.close()



# worker processes (export) -------------------------------------------------------------------------
def _user_batches_equal(a, b):
    return (len(a) == len(b) and all(torch.equal(x.user_id, y.user_id) and torch.equal(x.request_ts, y.request_ts)
                                     and _timeline_equal(x.explicit, y.explicit) and _timeline_equal(x.implicit, y.implicit)
                                     for x, y in zip(a, b)))


def _children():
    import multiprocessing

    return [p for p in multiprocessing.active_children() if p.name.startswith("dv365-loader")]


@pytest.mark.skipif(not dv365.data.procs.available(), reason="worker processes need Linux")
@pytest.mark.parametrize("batch_size,workers,kwargs", [
    (4, 2, {}), (3, 3, {"users": (2, 16)}), (1, 2, {"max_events": 5}), (5, 4, {"only_users": np.array([0, 2, 7, 8, 9, 16])}),
    (2, 2, {"cutoff_shift": -5 * 86400}),
])
def test_process_workers_equal_threads_batch_for_batch(data, batch_size, workers, kwargs):
    ds, shards = data
    kwargs = dict(kwargs)
    top = int(max(s.table(k)["ts"].max() for s in shards for k in KINDS))
    cutoff = top + 1 + kwargs.pop("cutoff_shift", 0)
    make = lambda mode, w: UserLoader(ds, batch_size, cutoff=cutoff, pin_memory=False, workers=w, mode=mode, **kwargs)  # noqa: E731
    ref = list(make("thread", 1))
    proc = make("process", workers)
    assert proc.uses_processes
    assert _user_batches_equal(list(proc), ref)
    assert _user_batches_equal(list(proc), ref)  # the workers are kept for the next pass
    proc.close()
    assert not _children()


@pytest.mark.skipif(not dv365.data.procs.available(), reason="worker processes need Linux")
def test_process_workers_resume_mid_pass_and_stop_early(data):
    ds, shards = data
    cutoff = int(max(s.table(IMPLICIT)["ts"].max() for s in shards)) - 3 * 86400
    whole = list(UserLoader(ds, 2, cutoff=cutoff, mode="thread", workers=1, pin_memory=False))
    first = UserLoader(ds, 2, cutoff=cutoff, mode="process", workers=3, pin_memory=False)
    head = [b for _, b in zip(range(3), first)]  # stops with batches in flight: the workers are stopped
    assert first._pool is None and not _children()
    resumed = UserLoader(ds, 2, cutoff=cutoff, mode="process", workers=2, pin_memory=False)
    resumed.load_state_dict(first.state_dict())
    assert _user_batches_equal(head + list(resumed), whole)
    resumed.close()


@pytest.mark.skipif(not dv365.data.procs.available(), reason="worker processes need Linux")
def test_process_worker_killed_or_failing_is_a_clear_error(data, monkeypatch):
    import os
    import signal

    ds, _ = data
    loader = UserLoader(ds, 1, cutoff=2**40, mode="process", workers=2, prefetch=0, pin_memory=False)
    it = iter(loader)
    next(it)
    os.kill(loader._pool.procs[1].pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"UserLoader: loader worker 1 \(pid \d+\) was killed by signal 9 while building batch"):
        for _ in it:
            pass
    assert loader._pool is None and not _children()

    def broken(self, start, end, outs):
        raise OSError("disk gone")

    monkeypatch.setattr(loader_module._Timeline, "fill", broken)  # inherited by the forked workers
    with pytest.raises(RuntimeError, match=r"(?s)loader worker 0 \(pid \d+\) failed on batch 0 \(shard 0, users 0..0\).*disk gone"):
        list(UserLoader(ds, 1, cutoff=2**40, mode="process", workers=2, pin_memory=False))
    assert not _children()


@pytest.mark.skipif(not dv365.data.procs.available(), reason="worker processes need Linux")
def test_process_workers_stop_on_keyboard_interrupt_and_when_collected(data):
    import gc
    import os

    ds, _ = data
    shm = sorted(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else []
    loader = UserLoader(ds, 1, cutoff=2**40, mode="process", workers=2, pin_memory=False)
    with pytest.raises(KeyboardInterrupt):
        for i, _ in enumerate(loader):
            if i == 2:
                raise KeyboardInterrupt
    assert not _children()
    loader = UserLoader(ds, 4, cutoff=2**40, mode="process", workers=2, pin_memory=False)
    kept = list(loader)  # a finished pass keeps its workers ...
    assert len(_children()) == 2
    del loader
    gc.collect()
    assert not _children()  # ... until the loader is gone; its batches stay valid
    ref = list(UserLoader(ds, 4, cutoff=2**40, mode="thread", workers=1, pin_memory=False))
    assert _user_batches_equal(kept, ref)
    assert (sorted(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else []) == shm  # arenas are memfds
    with pytest.raises(ValueError, match="mode must be"):
        UserLoader(ds, 4, cutoff=0, mode="fork")


@pytest.mark.skipif(not dv365.data.procs.available(), reason="worker processes need Linux")
@pytest.mark.parametrize("kw", [dict(batch_size=4), dict(batch_size=3, shuffle=True, seed=2, max_events=7),
                                dict(batch_size=2, world_size=3, rank=1, shuffle=True, validate=True),
                                dict(batch_size=5, drop_last=True, gap=3 * 86400, shards=[2, 0])])
def test_training_loader_processes_equal_threads_over_epochs(data, kw):
    ds, _ = data
    ref = Loader(ds, mode="thread", workers=1, pin_memory=False, **kw)
    proc = Loader(ds, mode="process", workers=3, pin_memory=False, **kw)
    assert proc.uses_processes and not ref.uses_processes
    for epoch in range(2):  # shuffled epochs differ; the same workers serve both
        a, b = list(ref), list(proc)
        assert len(a) == len(b) == len(ref) > 0
        assert all(_batch_equal(x, y) for x, y in zip(a, b)), epoch
        pids = [p.pid for p in proc._pool.procs] if epoch == 0 else pids
    assert [p.pid for p in proc._pool.procs] == pids and len(_children()) == 3
    proc.close()
    assert not _children()
    assert not Loader(ds, mode="auto", workers=1).uses_processes  # one worker: a thread (no process to feed)
    assert Loader(ds, mode="auto", workers=2).uses_processes and not Loader(ds, workers=2).uses_processes
    with pytest.raises(ValueError, match="Loader: mode must be"):
        Loader(ds, mode="fork")
    with pytest.raises(ValueError, match="Loader: workers must be >= 1, got 0"):
        Loader(ds, workers=0)


@pytest.mark.skipif(not dv365.data.procs.available(), reason="worker processes need Linux")
def test_training_loader_worker_failure_names_the_batch(data, monkeypatch):
    ds, _ = data

    def broken(self, start, end, outs):
        raise OSError("disk gone")

    monkeypatch.setattr(loader_module._Timeline, "fill", broken)  # inherited by the forked workers
    loader = Loader(ds, 4, mode="process", workers=2, pin_memory=False)
    with pytest.raises(RuntimeError, match=r"(?s)Loader: loader worker 0 \(pid \d+\) failed on batch 0 "
                                           r"\(shard 0, 4 examples\).*disk gone"):
        list(loader)
    assert loader._pool is None and not _children()
    assert loader.state_dict()["batches"] == 0  # nothing was received: a resume starts at the first batch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_training_loader_processes_pinned_batches_copy_to_the_device(data):
    ds, _ = data
    ref = list(Loader(ds, 3, mode="thread", workers=1, pin_memory=False))
    loader = Loader(ds, 3, mode="process", workers=2, pin_memory=True)
    got = []
    for b in loader:
        assert b.implicit.ts.is_pinned() and b.explicit.ids.is_pinned() and b.examples.labels.is_pinned()
        got.append(b.to("cuda", non_blocking=True))  # the host batch is dropped at once: its arena is reused
    torch.cuda.synchronize()
    assert all(_batch_equal(g.to("cpu"), r) for g, r in zip(got, ref)) and len(got) == len(ref)
    loader.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_process_workers_pinned_batches_copy_to_the_device(data):
    ds, _ = data
    ref = list(UserLoader(ds, 2, cutoff=2**40, mode="thread", workers=1, pin_memory=False))
    loader = UserLoader(ds, 2, cutoff=2**40, mode="process", workers=2, pin_memory=True)
    got = []
    for b in loader:
        assert b.implicit.ts.is_pinned() and b.explicit.ids.is_pinned()
        got.append(b.to("cuda", non_blocking=True))  # the host batch is dropped at once: its arena is reused
    torch.cuda.synchronize()
    assert _user_batches_equal([g.to("cpu") for g in got], ref)
    loader.close()


@pytest.mark.parametrize("array", [
    np.arange(5000, dtype=np.int64), np.arange(3 * 2000, dtype=np.int32).reshape(3, 2000), np.zeros((0, 7000), np.float32),
    np.array([7], dtype=np.int64), np.zeros((2, 0), np.int8), np.array(3.5, dtype=np.float32),
    np.full((2, 3000), np.nan, dtype=np.float32), np.asfortranarray(np.arange(6000, dtype=np.uint32).reshape(2, 3000)),
    np.arange(3000, dtype=">i4"), np.array([(1, 2.0)] * 700, dtype=[("a", "<i4"), ("b", "<f8")]),
])
def test_cache_npy_reader_matches_np_load(tmp_path, array):
    path = tmp_path / "a.npy"
    np.save(path, array)
    size = path.stat().st_size
    want = np.load(path, mmap_mode="r") if size > 4096 else np.load(path)
    got = cache_module._open_npy(path, size)
    assert got.dtype == want.dtype and got.shape == want.shape and got.flags.writeable == want.flags.writeable
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.skipif(not dv365.data.procs.available(), reason="worker processes need Linux")
def test_pinned_arena_is_rewritten_only_after_the_consumers_copies(monkeypatch):
    """The fence logic without a GPU: an arena dropped while its (fake) copies are pending is not handed out while
    another fits; at the arena limit it is waited for, never rewritten early."""
    events = []

    class FakeEvent:
        def __init__(self):
            self.done, self.waited = False, False
            events.append(self)

        def record(self):
            pass

        def query(self):
            return self.done

        def synchronize(self):
            self.waited = self.done = True

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    pool = dv365.data.procs.ProcessPool(1, lambda: None, lambda state, task, buf: None, "test", keep=2)
    try:
        a = pool.take(1000)
        pool.arenas[a].pinned = True  # as if page-locked
        pool.release(a)  # delivered and dropped at once: its copy may still be in flight
        b = pool.take(1000)
        assert b != a and len(events) == 1 and not events[0].done  # a fence was recorded for a, b is new
        pool.arenas[b].pinned = True
        pool.release(b)
        events[0].done = True  # a's copies finished
        assert pool.take(1000) == a and len(events) == 2  # a is ready again; b got its own fence
        pool.release(a)
        c = pool.take(1000)  # a's new fence pending, b's pending, limit reached: wait for one, reuse it
        assert c in (a, b) and len(pool.arenas) == 2 and any(e.waited for e in events[1:])
    finally:
        pool.close()
