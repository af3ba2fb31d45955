"""dv365.store on both backends: round trips through int4, missing users, pinned and unknown versions,
corruption, gc, publish verification, part rewrites, SIGKILL at every step of a publish and a gc, readers in
another process during a publish, Redis down, a full LMDB map."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import torch

import dv365_ops
from dv365.store import PartInfo, StoreError, open_store
from dv365.store.base import HEADER

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from store_helpers import SHAPE, RedisServer, records_for, write_version  # noqa: E402

HELPER = str(pathlib.Path(__file__).parent / "store_helpers.py")
BACKENDS = ["lmdb", "redis"]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    try:
        server = RedisServer(str(tmp_path_factory.mktemp("redis")))
    except FileNotFoundError:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (CI installs it in .ci/run)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    if request.param == "lmdb":
        return str(tmp_path / "store")
    server = request.getfixturevalue("redis_server")
    return server.url(f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def store(url):
    s = open_store(url, create=True)
    yield s
    s.close()


def quantized(n: int, dim: int = 256, tokens: int = 58, half: bool = False) -> torch.Tensor:
    x = torch.randn(n * tokens, dim) * torch.rand(n * tokens, 1) * 3
    return dv365_ops.int4_quantize(x, half_scale_bias=half).view(n, tokens, -1)


def run_helper(*args: str, crash_at: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("DV365_STORE_CRASH_AT", None)
    if crash_at:
        env["DV365_STORE_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, HELPER, *args], env=env, capture_output=True, text=True, timeout=timeout)


def assert_version(store, name: str, ids: np.ndarray, tag: int) -> None:
    """``name`` is current, every user reads back as written, and a full re-check of the version passes."""
    assert store.current() == name
    res = store.get(ids)
    assert res.version == name
    assert bool(res.found.all())
    np.testing.assert_array_equal(res.records.numpy(), records_for(ids, tag))
    report = store.verify(name)
    assert report.ok, str(report)
    assert report.users == len(ids)


# --- round trips -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("as_int64", [False, True])
def test_round_trip_int4(store, as_int64):
    n = 37
    q = quantized(n)
    ids = torch.randperm(10_000)[:n] - 5000  # negative ids too
    records = dv365_ops.as_int64(q.reshape(n * 58, 136)).view(n, 58, 17) if as_int64 else q
    w = store.stage("v1")
    info = w.write_part(0, ids[:20], records[:20])
    assert (info.part, info.count) == (0, 20)
    w.write_part(1, ids[20:], records[20:])
    m = store.publish("v1", {"num_tokens": 58, "dim": 256, "model": "fsa"})
    assert m["model"] == "fsa" and m["store"]["users"] == n
    assert m["store"]["record"]["dim"] == 256 and m["store"]["record"]["row_bytes"] == 136
    res = store.get(ids)
    assert res.version == "v1" and bool(res.found.all()) and not bool(res.corrupt.any())
    assert res.records.dtype == records.dtype and torch.equal(res.records, records)
    out = store.lookup(ids)
    want = dv365_ops.int4_dequantize(q.reshape(n * 58, 136)).view(n, 58, 256)
    assert out.embeddings.dtype == torch.float32 and torch.equal(out.embeddings, want)
    # independent of the op: the reference dequantization of what was written
    ref = dv365_ops.reference.int4_dequantize(q.reshape(n * 58, 136)).view(n, 58, 256)
    torch.testing.assert_close(out.embeddings, ref, rtol=0, atol=1e-6)


def test_round_trip_half_scale_bias(store):
    q = quantized(5, dim=64, tokens=7, half=True)  # rows of 32 + 4 bytes
    store.stage("h").write_part(3, [10, 11, 12, 13, 14], q)
    m = store.publish("h", {"half_scale_bias": True})
    assert m["store"]["record"] == {**m["store"]["record"], "num_tokens": 7, "dim": 64, "half_scale_bias": True}
    out = store.lookup([14, 99, 10])
    want = dv365_ops.int4_dequantize(q.reshape(35, 36), half_scale_bias=True).view(5, 7, 64)
    assert torch.equal(out.embeddings[0], want[4]) and torch.equal(out.embeddings[2], want[0])
    assert out.found.tolist() == [True, False, True] and not out.embeddings[1].any()


def test_missing_users_are_zeros_and_masked(store):
    ids = np.array([5, 7, 9])
    write_version(store, "v1", ids, tag=1, parts=1)
    res = store.lookup([7, 8, -1, 9, 2**62])
    assert res.found.tolist() == [True, False, False, True, False]
    assert not res.records[[1, 2, 4]].any() and not res.embeddings[[1, 2, 4]].any()
    np.testing.assert_array_equal(res.records[[0, 3]].numpy(), records_for(np.array([7, 9]), 1))
    assert store.get([]).records.shape == (0, *SHAPE)


def test_batch_of_1000(store):
    ids = np.arange(1500, dtype=np.int64) * 7
    write_version(store, "v1", ids, tag=1, parts=3)
    rng = np.random.default_rng(1)
    ask = rng.choice(np.arange(12_000), size=1000, replace=True)  # duplicates and misses
    res = store.get(torch.from_numpy(ask))
    present = np.isin(ask, ids)
    assert res.found.numpy().tolist() == present.tolist() and 50 < present.sum() < 950
    np.testing.assert_array_equal(res.records.numpy()[present], records_for(ask[present], 1))
    assert not res.records.numpy()[~present].any()


def test_no_current_version(store):
    res = store.get([1, 2])
    assert res.version is None and not res.found.any()
    assert store.current() is None and store.versions() == []
    with pytest.raises(StoreError, match="no current version"):
        store.lookup([1])


# --- versions --------------------------------------------------------------------------------------------------
def test_pinned_versions_and_unknown_version(store):
    ids = np.arange(50)
    write_version(store, "v1", ids, tag=1, parts=2)
    write_version(store, "v2", ids, tag=2, parts=1)
    assert store.current() == "v2"
    np.testing.assert_array_equal(store.get(ids, version="v1").records.numpy(), records_for(ids, 1))
    np.testing.assert_array_equal(store.get(ids).records.numpy(), records_for(ids, 2))
    assert [v.name for v in store.versions()] == ["v1", "v2"]
    assert [v.current for v in store.versions()] == [False, True]
    with pytest.raises(StoreError, match=r"version 'v9' is not a published version .*published: v1, v2"):
        store.get(ids, version="v9")
    store.stage("v3").write_part(0, ids, records_for(ids, 3))
    with pytest.raises(StoreError, match="'v3' is not a published version"):  # staged is not readable
        store.get(ids, version="v3")
    store.set_current("v1")
    assert store.get(ids[:3]).version == "v1"
    assert store.manifest("v2")["tag"] == 2 and store.manifest()["tag"] == 1


def test_published_versions_are_immutable(store):
    write_version(store, "v1", np.arange(4), tag=1, parts=1)
    with pytest.raises(StoreError, match="published and immutable"):
        store.stage("v1")
    with pytest.raises(StoreError, match="already published"):
        store.publish("v1", {})
    with pytest.raises(StoreError, match="never staged"):
        store.publish("nope", {})
    with pytest.raises(StoreError, match="version name"):
        store.stage("bad name")


def test_stage_is_idempotent(store):
    w = store.stage("v1")
    w.write_part(0, [1, 2], records_for(np.array([1, 2]), 1))
    store.stage("v1").write_part(1, [3], records_for(np.array([3]), 1))
    assert store.publish("v1", {})["store"]["users"] == 3


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="without a dv365 store"):
        open_store(str(tmp_path / "empty"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="non-empty directory that is not a dv365 store"):
        open_store(str(tmp_path / "full"), create=True)
    import lmdb

    lmdb.open(str(tmp_path / "other")).close()  # an LMDB environment of someone else
    with pytest.raises(StoreError, match="not a dv365 store"):
        open_store(f"lmdb://{tmp_path / 'other'}")
    with pytest.raises(StoreError, match="unknown store scheme"):
        open_store("s3://bucket/x")


_CREATE_TOGETHER = """
import sys, time
import numpy as np
sys.path.insert(0, {tests!r})
from dv365.store import open_store
from store_helpers import write_version
k, start = int(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
store = open_store({path!r}, create=True)
write_version(store, f"v{{k}}", np.arange(10 * k, 10 * k + 6), tag=k, parts=2)
store.close()
"""


def test_lmdb_created_by_several_processes_at_once(tmp_path):
    """Processes that create the same new store at the same moment end with one store holding every version: the
    first init wins, the others take part in it (none fails on the directory the others are filling, none resets
    the version counter another already advanced)."""
    path = str(tmp_path / "store")
    code = _CREATE_TOGETHER.format(tests=str(pathlib.Path(__file__).parent), path=path)
    for attempt in range(3):  # fresh stores, so the processes race at a different moment each time
        path_k = f"{path}{attempt}"
        start = time.time() + 1.5
        procs = [subprocess.Popen([sys.executable, "-c", code.replace(repr(path), repr(path_k)), str(k), str(start)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(1, 5)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-2000:]
        store = open_store(path_k)
        for k in range(1, 5):
            ids = np.arange(10 * k, 10 * k + 6)
            res = store.get(ids, version=f"v{k}")
            assert bool(res.found.all()), k
            np.testing.assert_array_equal(res.records.numpy(), records_for(ids, k))
        store.close()


def test_not_a_store_redis(redis_server):
    with pytest.raises(StoreError, match=r"no dv365 store at redis://.*prefix 'nothing_here' holds no"):
        open_store(redis_server.url("nothing_here"))


# --- integrity -------------------------------------------------------------------------------------------------
def corrupt_record(url: str, store, version: str, user: int, byte: int = 100) -> None:
    """Flips one payload byte of ``user``'s stored record, under the store's feet."""
    if url.startswith("redis://"):
        r = store._r
        key = store._k("r", int(r.hget(store._k("published"), version) or r.hget(store._k("vid"), version)), user)
        v = bytearray(r.get(key))
        v[HEADER.size + byte] ^= 0x5A
        r.set(key, bytes(v))
        return
    import lmdb

    from dv365.store.lmdb_store import _INDEX, record_keys

    store.close()
    env = lmdb.open(url, max_dbs=8)
    with env.begin(write=True) as txn:
        vid = _INDEX.unpack(txn.get(version.encode(), db=env.open_db(b"index", txn=txn)))[0]
        db = env.open_db(b"records", txn=txn)
        key = record_keys(vid, np.array([user], dtype=np.int64))[0]
        v = bytearray(txn.get(key, db=db))
        v[HEADER.size + byte] ^= 0x5A
        txn.put(key, bytes(v), db=db)
    env.close()


def test_corruption_is_detected(url, store, caplog):
    ids = np.arange(20)
    write_version(store, "v1", ids, tag=1, parts=2)
    corrupt_record(url, store, "v1", 13)
    s = open_store(url)
    with caplog.at_level(logging.WARNING, logger="dv365.store"):
        res = s.get([12, 13, 14])
    assert res.found.tolist() == [True, False, True] and res.corrupt.tolist() == [False, True, False]
    assert not res.records[1].any()
    assert "users [13]" in caplog.text and "'v1'" in caplog.text
    report = s.verify("v1")
    assert not report.ok and [u for u, _ in report.bad_records] == [13] and "checksum" in report.bad_records[0][1]
    s.close()
    strict = open_store(url, on_corrupt="raise")
    with pytest.raises(StoreError, match=r"corrupted record.*'v1'.*users \[13\]"):
        strict.get([13])
    strict.close()


def test_publish_refuses_bad_parts(url, store):
    ids = np.arange(40)
    write_version(store, "v1", ids, tag=1, parts=1)
    w = store.stage("v2")
    a = w.write_part(0, ids[:20], records_for(ids[:20], 2))
    b = w.write_part(1, ids[20:], records_for(ids[20:], 2))
    with pytest.raises(StoreError, match=r"part 1 does not match its worker's PartInfo: count 20"):
        store.publish("v2", {}, [a, PartInfo(1, 19, b.checksum)])
    with pytest.raises(StoreError, match="part 0 does not match"):
        store.publish("v2", {}, [PartInfo(0, 20, a.checksum ^ 1), b])
    with pytest.raises(StoreError, match=r"parts \[2\] were not written"):
        store.publish("v2", {}, [0, 1, 2])
    with pytest.raises(StoreError, match=r"parts \[1\] were written but are not in the parts to publish"):
        store.publish("v2", {}, [0])
    corrupt_record(url, store, "v2", 25)
    store = open_store(url)
    with pytest.raises(StoreError, match=r"refused, v1 stays current: part 1: 1 bad records \(user 25: checksum"):
        store.publish("v2", {}, [a, b])
    assert_version(store, "v1", ids, 1)
    w.store = store
    w.write_part(1, ids[20:], records_for(ids[20:], 2))  # the re-run of the bad part
    store.publish("v2", {}, [0, 1])
    assert_version(store, "v2", ids, 2)
    store.close()


def test_rewritten_part_replaces(store):
    w = store.stage("v1")
    w.write_part(0, [1, 2, 3, 4], records_for(np.array([1, 2, 3, 4]), 7))
    w.write_part(1, [10, 11], records_for(np.array([10, 11]), 1))
    info = w.write_part(0, [3, 4, 5], records_for(np.array([3, 4, 5]), 1))
    assert info.count == 3
    m = store.publish("v1", {})
    assert m["store"]["users"] == 5 and m["store"]["parts"]["0"]["count"] == 3
    res = store.get([1, 2, 3, 4, 5, 10, 11])
    assert res.found.tolist() == [False, False, True, True, True, True, True]
    np.testing.assert_array_equal(res.records.numpy()[2:], records_for(np.array([3, 4, 5, 10, 11]), 1))


def test_write_part_input_errors(store):
    w = store.stage("v1")
    w.write_part(0, [1, 2], records_for(np.array([1, 2]), 1))
    with pytest.raises(StoreError, match="user 2 is already in part 0"):
        w.write_part(1, [2, 3], records_for(np.array([2, 3]), 1))
    with pytest.raises(StoreError, match=r"records are uint8 \[58, 68\] but this version's parts are uint8 \[58, 136"):
        w.write_part(2, [7], np.zeros((1, 58, 68), np.uint8))
    with pytest.raises(StoreError, match="must be uint8 or int64"):
        w.write_part(2, [7], np.zeros((1, 58, 136), np.float32))
    with pytest.raises(StoreError, match=r"records must be \[n=2, \.\.\.\]"):
        w.write_part(2, [7, 8], np.zeros((1, 58, 136), np.uint8))
    with pytest.raises(StoreError, match="duplicates"):
        w.write_part(2, [7, 7], np.zeros((2, 58, 136), np.uint8))
    with pytest.raises(StoreError, match=r"part must be an int in \[0, 2\*\*32\)"):
        w.write_part(-1, [7], np.zeros((1, 58, 136), np.uint8))
    with pytest.raises(StoreError, match="manifest 'dim' = 128"):
        store.publish("v1", {"dim": 128})
    with pytest.raises(StoreError, match="reserved"):
        store.publish("v1", {"store": 1})


def test_gc_keeps_last_and_current(store):
    ids = np.arange(10)
    for i in range(1, 5):
        write_version(store, f"v{i}", ids, tag=i, parts=1)
    store.set_current("v2")
    store.stage("v5").write_part(0, ids, records_for(ids, 5))  # an export in progress
    assert sorted(store.gc(keep_last=1)) == ["v1", "v3"]
    assert [v.name for v in store.versions()] == ["v2", "v4", "v5"]
    assert sorted(store.gc(keep_last=1, staged_older_than=0)) == ["v5"]
    assert [v.name for v in store.versions()] == ["v2", "v4"]
    np.testing.assert_array_equal(store.get(ids).records.numpy(), records_for(ids, 2))
    np.testing.assert_array_equal(store.get(ids, version="v4").records.numpy(), records_for(ids, 4))
    assert store.gc(keep_last=0) == ["v4"]
    assert [v.name for v in store.versions()] == ["v2"]
    write_version(store, "v1", ids, tag=11, parts=1)  # a removed name staged again starts empty
    np.testing.assert_array_equal(store.get(ids).records.numpy(), records_for(ids, 11))


def test_gc_keeping_more_than_there_are_removes_nothing(store):
    ids = np.arange(10)
    write_version(store, "v1", ids, tag=1, parts=1)
    write_version(store, "v2", ids, tag=2, parts=1)
    assert store.gc(keep_last=3) == []
    assert [v.name for v in store.versions()] == ["v1", "v2"]


# --- crashes and concurrency -----------------------------------------------------------------------------------
def test_atomic_publish_under_sigkill(url, store):
    users, parts = 600, 4
    ids = np.arange(users, dtype=np.int64) * 3 + 1  # the helper's users
    t0 = time.monotonic()
    write_version(store, "v1", ids, tag=1, parts=2)
    write_seconds = time.monotonic() - t0
    startup = float("inf")
    for step in ("write_part:records", "publish:verified", "publish:switching"):
        t0 = time.monotonic()
        proc = run_helper("publish", url, "--users", str(users), "--parts", str(parts), crash_at=step)
        startup = min(startup, time.monotonic() - t0)  # the first step dies right after its first records
        assert proc.returncode == -signal.SIGKILL, (step, proc.stderr)
        assert_version(store, "v1", ids, 1)
    published = False
    for _ in range(2):  # kills at a random time, mostly while it writes or publishes
        delay = startup * random.uniform(0.8, 1.0) + random.uniform(0, 1.5 * write_seconds)
        p = subprocess.Popen([sys.executable, HELPER, "publish", url, "--users", str(users), "--parts", str(parts)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        if store.current() == "v2":  # it finished before the kill
            assert_version(store, "v2", ids, 2)
            published = True
            break
        assert_version(store, "v1", ids, 1)
    if not published:
        proc = run_helper("publish", url, "--users", str(users), "--parts", str(parts))
        assert proc.returncode == 0, proc.stderr
    assert_version(store, "v2", ids, 2)  # the re-run resumed: every user once, nothing of the killed runs
    assert [(v.name, v.users) for v in store.versions()] == [("v1", users), ("v2", users)]
    np.testing.assert_array_equal(store.get(ids, version="v1").records.numpy(), records_for(ids, 1))


def test_gc_under_sigkill(url, store):
    ids = np.arange(600, dtype=np.int64)
    for i in (1, 2, 3):
        write_version(store, f"v{i}", ids, tag=i, parts=3)
    proc = run_helper("gc", url, "--keep", "1", crash_at="gc:deleting")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert_version(store, "v3", ids, 3)
    for v in store.versions():  # whatever a killed gc left listed is whole
        if v.name != "v3":
            assert store.verify(v.name).ok
    proc = run_helper("gc", url, "--keep", "1")
    assert proc.returncode == 0, proc.stderr
    assert [v.name for v in store.versions()] == ["v3"]
    if url.startswith("redis://"):  # nothing of the removed versions is left behind
        keys = [k for k in store._r.scan_iter(match=store._k("*"))]
        vid3 = int(store._r.hget(store._k("vid"), "v3"))
        stray = [k for k in keys if k.startswith(store._k("r", b"")) and not k.startswith(store._k("r", vid3, b""))]
        assert stray == [] and store._r.scard(store._k("trash")) == 0
    assert_version(store, "v3", ids, 3)


def test_readers_see_one_version_per_request(url, store):
    users = 3000
    ids = np.arange(users, dtype=np.int64) * 3 + 1
    write_version(store, "v1", ids, tag=1, parts=2)
    reader = subprocess.Popen([sys.executable, HELPER, "read", url, "--users", str(users), "--timeout", "40"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "ready", reader.stderr.read()
        write_version(store, "v2", ids, tag=2, parts=4)
        out, err = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
    counts = json.loads(out.strip().splitlines()[-1])
    assert counts["mixed"] == 0 and counts["bad_version"] == 0, counts
    assert counts["old"] >= 1 and counts["new"] == 20, counts


# --- backend specifics -----------------------------------------------------------------------------------------
def test_redis_down_is_a_bounded_error(tmp_path):
    try:
        server = RedisServer(str(tmp_path))
    except FileNotFoundError:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    url = server.url("down")
    store = open_store(url, create=True)
    write_version(store, "v1", np.arange(3), tag=1, parts=1)
    server.stop()
    t0 = time.monotonic()
    with pytest.raises(StoreError, match=rf"cannot reach Redis at redis://127.0.0.1:{server.port}/0\?prefix=down"):
        store.get([1, 2])
    assert time.monotonic() - t0 < 10
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="cannot reach Redis"):
        open_store(url + "&timeout=1")
    assert time.monotonic() - t0 < 10


def test_redis_url_password_is_hidden(redis_server):
    with pytest.raises(StoreError) as e:
        open_store(f"redis://:s3cret@127.0.0.1:{redis_server.port}/0?prefix=x&retries=0")
    assert "s3cret" not in str(e.value) and "***" in str(e.value)


def test_lmdb_map_grows_and_a_full_store_keeps_the_previous_version(tmp_path):
    path = str(tmp_path / "s")
    ids = np.arange(400, dtype=np.int64)  # 3.2 MB of records
    store = open_store(path, create=True, map_size=1 << 20)  # grows from 1 MiB
    write_version(store, "v1", ids, tag=1, parts=2)
    assert store.env.info()["map_size"] >= 4 << 20
    store.close()
    store = open_store(path, max_map_size=8 << 20)
    big = np.arange(2000, dtype=np.int64)  # 16 MB: cannot fit
    w = store.stage("v2")
    with pytest.raises(StoreError, match="is full .*nothing was written, the current version is unchanged"):
        w.write_part(0, big, records_for(big, 2))
    assert_version(store, "v1", ids, 1)
    assert store.versions()[-1].users == 0  # the staged version holds nothing of the failed part
    store.close()
    reader = open_store(f"lmdb://{path}", readonly=True)
    assert_version(reader, "v1", ids, 1)
    with pytest.raises(StoreError, match="opened readonly"):
        reader.stage("v3")
    reader.close()


def test_lmdb_same_directory_twice_in_one_process(tmp_path):
    path = str(tmp_path / "s")
    writer = open_store(path, create=True)
    reader = open_store(f"lmdb://{path}", readonly=True)  # shares the writer's environment
    write_version(writer, "v1", np.arange(5), tag=1, parts=1)
    assert reader.get([4]).version == "v1"
    with pytest.raises(StoreError, match="opened readonly"):
        reader.gc(0)
    writer.close()
    assert bool(reader.get([4]).found[0])
    with pytest.raises(StoreError, match="closed"):
        writer.get([4])
    reader.close()
    reader = open_store(path, readonly=True)
    with pytest.raises(StoreError, match="already open readonly in this process"):
        open_store(path)
    reader.close()
    open_store(path).close()


# --- command line ----------------------------------------------------------------------------------------------
def test_cli(url, store, capsys):
    from dv365.cli import main

    ids = np.arange(6)
    write_version(store, "v1", ids, tag=1, parts=2)
    q = quantized(6)
    store.stage("v2").write_part(0, ids, q)
    store.publish("v2", {"model": "fsa"})
    capsys.readouterr()
    assert main(["store", "ls", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["version", "state", "users", "parts", "size", "created", "published"]
    assert lines[1].split()[:4] == ["v1", "published", "6", "2"]
    assert lines[2].split()[:4] == ["*", "v2", "published", "6"]
    assert main(["store", "show", url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["model"] == "fsa" and shown["store"]["record"]["dim"] == 256
    assert main(["store", "verify", url, "v1"]) == 0
    assert "version v1: 6 users in 2 parts, ok" in capsys.readouterr().out
    assert main(["lookup", "3", "42", "--store", url]) == 0
    out = capsys.readouterr().out.splitlines()
    row = dv365_ops.int4_dequantize(q[3])[0, :6]
    assert out[0] == ("user 3: found, version v2, embedding [58, 256] float32, row 0 ["
                      + ", ".join(f"{v:.4f}" for v in row.tolist()) + ", ...]")
    assert out[1] == "user 42: not found (version v2)"
    assert main(["lookup", "3", "--store", url, "--raw", "--version", "v1"]) == 0
    assert capsys.readouterr().out.strip() == ("user 3: found, version v1, record [58, 136] uint8, first bytes "
                                               + records_for(np.array([3]), 1)[0, 0, :16].tobytes().hex(" "))
    assert main(["store", "gc", url, "--keep", "1"]) == 0
    assert capsys.readouterr().out.strip() == "removed 1 version(s): v1"
    corrupt_record(url, store, "v2", 4)
    assert main(["store", "verify", url]) == 1
    assert "user 4: checksum mismatch" in capsys.readouterr().out
    assert main(["lookup", "4", "--store", url]) == 0
    assert "user 4: CORRUPT record in version v2" in capsys.readouterr().out


def test_cli_user_errors(tmp_path, capsys):
    from dv365.cli import main

    assert main(["store", "ls", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "dv365 store ls: error: open_store:" in err and "does not exist" in err and "Traceback" not in err
    s = open_store(str(tmp_path / "s"), create=True)
    write_version(s, "v1", np.arange(3), tag=1, parts=1)
    s.close()
    assert main(["lookup", "1", "--store", str(tmp_path / "s"), "--version", "v7"]) == 2
    assert "dv365 lookup: error: version 'v7' is not a published version" in capsys.readouterr().err
    assert main(["store", "gc", str(tmp_path / "s"), "--keep", "-1"]) == 2
    assert "keep_last must be an int >= 0, got -1" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::UserWarning")  # a tiny log: ingest warns about short histories
def test_cli_lookup_by_raw_ids_of_an_ingested_log(tmp_path, capsys):
    # an ingested log's users are strings; the store holds dense ids. --data maps them through vocab/users.parquet
    from dv365.cli import main
    from dv365.data import ingest

    log = tmp_path / "log.csv"
    log.write_text("u,i,t\n" + "".join(f"{u},i{k},{1_700_000_000 + 60 * k}\n"
                                        for k, u in enumerate(["zed", "amy", "zed", "bob", "amy"])))
    ingest(log, tmp_path / "ds", {"user": "u", "item": "i", "timestamp": "t"})  # zed 0, amy 1, bob 2
    url = str(tmp_path / "s")
    with open_store(url, create=True) as st:
        q = quantized(3, dim=8, tokens=2)
        st.stage("v1").write_part(0, np.arange(3), q)
        st.publish("v1", {"num_tokens": 2, "dim": 8})
    capsys.readouterr()
    args = ["lookup", "bob", "nobody", "zed", "--store", url, "--data", str(tmp_path / "ds"), "--values", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    row = lambda i: ", ".join(f"{v:.4f}" for v in dv365_ops.int4_dequantize(q[i])[0, :2].tolist())  # noqa: E731
    assert out == [f"user bob (id 2): found, version v1, embedding [2, 8] float32, row 0 [{row(2)}, ...]",
                   f"user nobody: not in {tmp_path / 'ds'} (no such raw id in its vocab/users.parquet)",
                   f"user zed (id 0): found, version v1, embedding [2, 8] float32, row 0 [{row(0)}, ...]"]
    # without --data a raw id is a clear error naming the flag; a dataset without a vocabulary too
    assert main(["lookup", "bob", "--store", url]) == 2
    assert "USER 'bob' is not a dense user id (an integer); for your own ids of an ingested log pass --data" in \
        capsys.readouterr().err
    (tmp_path / "synth").mkdir()
    assert main(["lookup", "1", "--store", url, "--data", str(tmp_path / "synth")]) == 2
    assert "no vocab/users.parquet" in capsys.readouterr().err


def test_cli_store_show_prints_strict_json(tmp_path, capsys):
    # an export of a real log records fill_missing: NaN; `store show` printed a bare NaN, which JSON has not
    # (JavaScript's JSON.parse fails, jq 1.6 reads null): non-finite numbers print as strings
    from dv365.cli import main

    url = str(tmp_path / "s")
    with open_store(url, create=True) as st:
        st.stage("v1").write_part(0, np.arange(3), quantized(3, dim=8, tokens=2))
        st.publish("v1", {"num_tokens": 2, "dim": 8, "fill_missing": float("nan"), "ne": [float("inf"), 1.5]})
    assert main(["store", "show", url]) == 0
    shown = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert shown["fill_missing"] == "NaN" and shown["ne"] == ["Infinity", 1.5] and shown["dim"] == 8
    with open_store(url) as st:
        assert st.manifest()["fill_missing"] != st.manifest()["fill_missing"]  # the stored value stays a float NaN
