"""dv365 export: records equal the model's int4 output, resume after SIGKILL, workers + publish, incremental ==
full, idempotent reruns, bad input (unknown --since, not a store, Redis down, a checkpoint that does not fit the
data, a full disk)."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import dv365_ops
from dv365.data import SynthConfig, UserLoader, generate, open_dataset, users_with_new_events
from dv365.export import ExportError, boundary_offsets, export, users_to_reexport
from dv365.spec import Slice, SliceSpec, Table
from dv365.store import StoreError, open_store
from dv365.train import CheckpointError, TrainConfig, load_model, train

TINY = SynthConfig(mean_length=300, num_items=400, num_authors=60, num_topics=24, users_per_shard=8,
                   examples_per_user=2, span_days=40.0, end_jitter_days=12.0)
DAY = 86_400


def _train(root: Path, data: str, name: str, steps: int = 3, tower=("LCE", {"num_out": 6})) -> str:
    cfg = TrainConfig.from_dict({
        "run_dir": str(root / name), "threads": 1,
        "data": {"path": data, "batch_size": 8, "prefetch": 0},
        "model": {"dim": 8, "tower": {"name": tower[0], "args": tower[1]},
                  "backbone": {"embedding_dim": 8, "bottom_mlp": [16], "top_mlp": [16], "user_buckets": 101}},
        "schedule": {"steps": steps, "log_every": 1}, "checkpoint": {"every": steps, "keep": 1},
    })
    train(cfg, progress=False)
    return str(root / name)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("export")
    data = str(root / "data")
    generate(37, seed=3, config=TINY).write(data)
    big = str(root / "big-vocab")  # ids beyond the model's tables
    generate(5, seed=4, config=dataclass_replace(TINY, num_items=4000)).write(big)
    return {"root": root, "data": data, "big": big, "model": _train(root, data, "run"),
            "model2": _train(root, data, "run2", steps=4)}


def dataclass_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def _opts(tmp: Path, **kw) -> dict:
    return {"part_size": 8, "batch_size": 5, "progress": False, "progress_dir": tmp / "progress", **kw}


def _records(store: str, version: str, n: int) -> torch.Tensor:
    with open_store(store) as st:
        res = st.get(torch.arange(n), version=version)
    assert bool(res.found.all())
    return res.records.clone()


def _ask(store: str, what: str, *args):
    """One call on a store opened for it (LMDB allows one open handle per process and directory)."""
    with open_store(store) as st:
        return getattr(st, what)(*args)


def _expected(env: dict, cutoff: int, half: bool = False, model_dir: str | None = None) -> torch.Tensor:
    """The model's output at ``cutoff``, quantized: one user per batch (the export batches several)."""
    model, cfg, _ = load_model(model_dir or env["model"])
    ds = open_dataset(env["data"])
    with torch.inference_mode():
        emb = torch.cat([model.embed(b.explicit, b.implicit, b.request_ts)
                         for b in UserLoader(ds, batch_size=1, cutoff=cutoff, gap=cfg.data.gap, prefetch=0)])
    q = dv365_ops.int4_quantize(emb.reshape(-1, emb.shape[-1]), half_scale_bias=half)
    return q.reshape(emb.shape[0], emb.shape[1], -1)


def test_full_export_equals_the_model_and_manifest(env, tmp_path):
    store = str(tmp_path / "store")
    ds = open_dataset(env["data"])
    res = export(env["model"], env["data"], store, **_opts(tmp_path))
    cutoff = ds.manifest["time_range"]["max_ts"] + 1
    assert res.published and res.exported == ds.num_users and res.parts_written == [0, 1, 2, 3, 4]
    got = _records(store, res.version, ds.num_users)
    assert got.shape == (37, 6, 8 // 2 + 8)
    assert torch.equal(got, _expected(env, cutoff))
    st = open_store(store)
    assert st.current() == res.version
    m = st.manifest(res.version)
    assert m["cutoff"] == cutoff and m["request_ts"] == cutoff + 86_400 and m["users"] == 37
    assert m["num_tokens"] == 6 and m["dim"] == 8 and m["record"]["bytes_per_row"] == 12
    assert m["tower"] == "LCE" and m["checkpoint"]["step"] == 3 and len(m["checkpoint"]["hash"]) == 16
    assert sorted(m["store"]["parts"]) == ["0", "1", "2", "3", "4"] and m["parts"]["4"] == [32, 37]
    # served embeddings are the dequantized records
    emb = st.lookup([0, 36, 999]).embeddings
    st.close()
    ref = dv365_ops.int4_dequantize(got[[0, 36]].reshape(-1, 12)).reshape(2, 6, 8)
    assert torch.equal(emb[:2], ref) and not emb[2].any()


def test_half_scale_bias_and_an_explicit_cutoff(env, tmp_path):
    store = str(tmp_path / "store")
    ds = open_dataset(env["data"])
    cutoff = ds.manifest["time_range"]["max_ts"] - 5 * DAY
    res = export(env["model"], env["data"], store, cutoff=cutoff, half_scale_bias=True, **_opts(tmp_path))
    got = _records(store, res.version, ds.num_users)
    assert got.shape == (37, 6, 8 // 2 + 4)
    assert torch.equal(got, _expected(env, cutoff, half=True))
    assert _ask(store, "manifest", res.version)["record"]["scale_bias"] == "fp16"


def test_rerun_is_idempotent_and_a_taken_version_is_refused(env, tmp_path):
    store = str(tmp_path / "store")
    first = export(env["model"], env["data"], store, version="v1", **_opts(tmp_path))
    again = export(env["model"], env["data"], store, version="v1", **_opts(tmp_path))
    assert again.already_published and again.exported == 0
    assert again.manifest["created"] == first.manifest["created"]
    with pytest.raises(ExportError, match="'v1' is already published .* immutable"):
        export(env["model2"], env["data"], store, version="v1", **_opts(tmp_path))


def _cli(args: list[str], env_vars: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_vars or {})}
    # run outside the source tree, as a user would: `python -m` puts the working directory first on sys.path, and
    # the repository root's dv365_ops/ (sources only when the build was installed elsewhere) would shadow the build
    return subprocess.run([sys.executable, "-m", "dv365.cli", *args], capture_output=True, text=True, env=full,
                          timeout=timeout, cwd=tempfile.gettempdir())


@pytest.mark.parametrize("point", ["export.part:2", "export.batch:5"])
def test_resume_after_sigkill_equals_an_uninterrupted_export(env, tmp_path, point):
    store, clean = str(tmp_path / "store"), str(tmp_path / "clean")
    args = ["export", env["model"], "--data", env["data"], "--store", store, "--version", "v", "--part-size", "8",
            "--batch-size", "3", "--progress-dir", str(tmp_path / "progress"), "--quiet", "--json"]
    killed = _cli(args, {"DV365_FAULT": point})
    assert killed.returncode == -9, killed.stderr
    assert _ask(store, "current") is None  # nothing published
    rerun = _cli(args)
    assert rerun.returncode == 0, rerun.stderr
    out = json.loads(rerun.stdout)
    # export.part:2 dies after parts 0 and 1 are recorded; export.batch:5 after 15 users (part 1 unfinished)
    assert out["parts_skipped"] == ([0, 1] if point == "export.part:2" else [0])
    assert sorted(out["parts_written"] + out["parts_skipped"]) == [0, 1, 2, 3, 4]
    assert out["exported"] == 37 - 8 * len(out["parts_skipped"])
    export(env["model"], env["data"], clean, version="v", **_opts(tmp_path / "c"))
    assert torch.equal(_records(store, "v", 37), _records(clean, "v", 37))
    assert _ask(store, "verify", "v").ok


def test_workers_then_publish_only(env, tmp_path):
    store, clean = str(tmp_path / "store"), str(tmp_path / "clean")
    opts = _opts(tmp_path, version="w")
    a = export(env["model"], env["data"], store, part=0, parts=2, **opts)
    assert not a.published and a.parts_written == [0, 1]
    with pytest.raises(StoreError, match="not written"):
        export(env["model"], env["data"], store, publish_only=True, **opts)
    b = export(env["model"], env["data"], store, part=1, parts=2, **opts)
    assert b.parts_written == [2, 3, 4]
    with pytest.raises(StoreError, match="not in the parts to publish"):  # the workers used 5 parts of 8 users
        export(env["model"], env["data"], store, publish_only=True, **dict(opts, part_size=10))
    with pytest.raises(ExportError, match="'nope' is not staged"):
        export(env["model"], env["data"], store, publish_only=True, **dict(opts, version="nope"))
    done = export(env["model"], env["data"], store, publish_only=True, **opts)
    assert done.published and _ask(store, "current") == "w"
    export(env["model"], env["data"], clean, version="w", **_opts(tmp_path / "c"))
    assert torch.equal(_records(store, "w", 37), _records(clean, "w", 37))


def test_a_full_disk_leaves_the_previous_version_served(env, tmp_path, monkeypatch, capsys):
    from dv365.store.base import StagedVersion

    store = str(tmp_path / "store")
    export(env["model"], env["data"], store, version="old", **_opts(tmp_path))
    before = _records(store, "old", 37)
    real = StagedVersion.write_part
    calls = {"n": 0}

    def full_disk(self, part, ids, records):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, part, ids, records)

    monkeypatch.setattr(StagedVersion, "write_part", full_disk)
    with pytest.raises(OSError) as e:
        export(env["model2"], env["data"], store, version="new", **_opts(tmp_path))
    assert e.value.errno == errno.ENOSPC
    from dv365.cli import main

    calls["n"] = 2  # the CLI's next write_part fails too, on another version
    assert main(["export", env["model2"], "--data", env["data"], "--store", store, "--version", "new2", "--quiet",
                 "--progress-dir", str(tmp_path / "progress")]) == 1
    err = capsys.readouterr().err
    assert "the disk is full" in err and "current version is unchanged" in err and "Traceback" not in err
    assert _ask(store, "current") == "old" and torch.equal(_records(store, "old", 37), before)
    monkeypatch.setattr(StagedVersion, "write_part", real)
    res = export(env["model2"], env["data"], store, version="new", **_opts(tmp_path))
    assert res.parts_skipped == [0, 1] and res.published and _ask(store, "current") == "new"


# ---- incremental ---------------------------------------------------------------------------------------------

def test_incremental_equals_a_full_export(env, tmp_path):
    store = str(tmp_path / "store")
    ds = open_dataset(env["data"])
    c1 = ds.manifest["time_range"]["max_ts"] + 1
    c0 = c1 - 3 * DAY
    export(env["model"], env["data"], store, cutoff=c0, version="c0", **_opts(tmp_path))
    inc = export(env["model"], env["data"], store, cutoff=c1, version="inc", since="c0", **_opts(tmp_path))
    export(env["model"], env["data"], store, cutoff=c1, version="full", **_opts(tmp_path))
    assert inc.carried > 0 and inc.exported > 0 and inc.carried + inc.exported == 37
    old, new, full = (_records(store, v, 37) for v in ("c0", "inc", "full"))
    assert torch.equal(new, full)
    # window movement matters: some users without new events still change between the cut-offs
    spec = SliceSpec.from_dict(load_model(env["model"])[2]["spec"])
    moved = np.setdiff1d(users_to_reexport(ds, spec, c0, c1, 86_400), users_with_new_events(ds, c0))
    assert moved.size and any(not torch.equal(old[u], full[u]) for u in moved)
    m = _ask(store, "manifest", "inc")
    assert m["incremental"] == {"since": "c0", "since_cutoff": c0}


def test_users_outside_the_reexport_set_pool_identically(env):
    """Independent of the export: pooled slices of every user not selected are equal at both cut-offs."""
    model, cfg, ckpt = load_model(env["model"])
    ds = open_dataset(env["data"])
    c1 = ds.manifest["time_range"]["max_ts"] + 1
    spec = SliceSpec.from_dict(ckpt["spec"])
    for c0 in (c1 - DAY // 2, c1 - 3 * DAY, c1 - 10 * DAY):
        chosen = users_to_reexport(ds, spec, c0, c1, cfg.data.gap)
        pooled = []
        for c in (c0, c1):
            with torch.inference_mode():
                pooled.append(torch.cat([model.pooling(b.explicit, b.implicit, b.request_ts)
                                         for b in UserLoader(ds, batch_size=8, cutoff=c, gap=cfg.data.gap, prefetch=0)]))
        same = (pooled[0] == pooled[1]).flatten(1).all(1).numpy()
        assert same[np.setdiff1d(np.arange(37), chosen)].all()
        assert not same.all()


def test_boundary_offsets():
    t = (Table("t", "media_id", 10),)
    spec = SliceSpec((Slice("a", "explicit", "media_id", "t", window="3d"),
                      Slice("b", "explicit", "media_id", "t", window="7d", gap="2d"),
                      Slice("c", "implicit", "media_id", "t")), t, dim=8)
    # gap 1 d: history cut 0; 3 d window: 1 - 3 = -2 d; 7 d window: -6 d; b skips 2 d > 1 d: its end is -1 d
    assert boundary_offsets(spec, DAY) == [-6 * DAY, -2 * DAY, -DAY, 0]


def test_incremental_refuses_another_checkpoint_and_unknown_versions(env, tmp_path):
    store = str(tmp_path / "store")
    export(env["model"], env["data"], store, version="base", **_opts(tmp_path))
    with pytest.raises(ExportError, match="another checkpoint .* full export"):
        export(env["model2"], env["data"], store, version="x", since="base", **_opts(tmp_path))
    with pytest.raises(ExportError, match=r"--since 'nope' is not a published version .*\(published: base\)"):
        export(env["model"], env["data"], store, version="x", since="nope", **_opts(tmp_path))


# ---- bad input -----------------------------------------------------------------------------------------------

def test_checkpoint_that_does_not_fit_the_data(env, tmp_path):
    with pytest.raises(CheckpointError, match="ids beyond the tables"):
        export(env["model"], env["big"], str(tmp_path / "store"), **_opts(tmp_path))


def test_cli_errors_are_clear(env, tmp_path, capsys):
    from dv365.cli import main

    def cli(*args: str) -> str:
        assert main(["export", env["model"], "--data", env["data"], "--quiet", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dv365 export: ") and "Traceback" not in err
        return err

    not_store = tmp_path / "not-a-store"
    not_store.mkdir()
    (not_store / "notes.txt").write_text("hello")
    assert "not a dv365 store" in cli("--store", str(not_store))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    if importlib.util.find_spec("redis") is None:  # an image without the client (the GPU machine's)
        assert "needs the redis package" in cli("--store", f"redis://127.0.0.1:{port}/0")
    else:
        assert f"127.0.0.1:{port}" in cli("--store", f"redis://127.0.0.1:{port}/0")
    assert time.monotonic() - t < 30
    assert "--part and --parts go together" in cli("--store", str(tmp_path / "s"), "--part", "1")
    assert "--cutoff must be seconds" in cli("--store", str(tmp_path / "s"), "--cutoff", "yesterday")
    export(env["model"], env["data"], str(tmp_path / "s"), version="v", **_opts(tmp_path))
    assert "--since 'v0' is not a published version" in cli("--store", str(tmp_path / "s"), "--since", "v0")


def test_torchrun_ranks_write_their_parts_and_rank_0_publishes(env, tmp_path):
    store, clean = str(tmp_path / "store"), str(tmp_path / "clean")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "dv365.cli", "export", env["model"], "--data", env["data"], "--store", store, "--version", "t",
           "--part-size", "8", "--batch-size", "4", "--progress-dir", str(tmp_path / "progress"), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    # rank 0 publishes, rank 1 only writes
    assert "published version t" in r.stdout and "wrote parts" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
    assert _ask(store, "current") == "t"
    export(env["model"], env["data"], clean, version="t", **_opts(tmp_path / "c"))
    assert torch.equal(_records(store, "t", 37), _records(clean, "t", 37))


def test_reexport_set_is_the_same_from_the_cache_and_from_parquet(env, monkeypatch):
    ds = open_dataset(env["data"])
    spec = SliceSpec.from_dict(load_model(env["model"])[2]["spec"])
    c1 = ds.manifest["time_range"]["max_ts"] + 1
    cached = users_to_reexport(ds, spec, c1 - 2 * DAY, c1, 86_400)
    monkeypatch.setenv("DV365_DATA_CACHE", "0")
    parquet = users_to_reexport(ds, spec, c1 - 2 * DAY, c1, 86_400)
    assert cached.size and np.array_equal(cached, parquet)


@pytest.fixture
def redis_url(tmp_path):
    import shutil

    from store_helpers import RedisServer

    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        pytest.skip("redis-server is not installed")
    server = RedisServer(str(tmp_path))
    try:
        yield server.url("dv365test")
    finally:
        server.stop()


def test_full_and_incremental_export_into_redis(env, tmp_path, redis_url):
    ds = open_dataset(env["data"])
    c1 = ds.manifest["time_range"]["max_ts"] + 1
    export(env["model"], env["data"], redis_url, cutoff=c1 - 2 * DAY, version="c0", **_opts(tmp_path))
    inc = export(env["model"], env["data"], redis_url, cutoff=c1, version="inc", since="c0", **_opts(tmp_path))
    export(env["model"], env["data"], redis_url, cutoff=c1, version="full", keep=2, **_opts(tmp_path))
    assert inc.carried > 0
    with open_store(redis_url) as st:
        assert [v.name for v in st.versions()] == ["inc", "full"] and st.current() == "full"
        got = {v: st.get(torch.arange(37), version=v).records for v in ("inc", "full")}
    assert torch.equal(got["inc"], got["full"]) and torch.equal(got["full"], _expected(env, c1))


def test_incremental_onto_a_grown_snapshot(env, tmp_path):
    """The base was exported from an older snapshot with fewer users: the new users are computed, not carried."""
    from dv365.data import write_dataset

    ds = open_dataset(env["data"])
    old = tmp_path / "old-data"
    write_dataset(old, [ds.read_shard(k) for k in range(3)])  # users 0..23 of the 37
    store = str(tmp_path / "store")
    c1 = ds.manifest["time_range"]["max_ts"] + 1
    export(env["model"], str(old), store, cutoff=c1 - DAY, version="old", **_opts(tmp_path))
    inc = export(env["model"], env["data"], store, cutoff=c1, version="inc", since="old", **_opts(tmp_path))
    assert inc.carried > 0 and inc.exported >= 37 - 24
    assert torch.equal(_records(store, "inc", 37), _expected(env, c1))
    with pytest.raises(ExportError, match="has 37 users, the data only 24"):
        export(env["model"], str(old), store, cutoff=c1, version="back", since="inc", **_opts(tmp_path))
