"""dv365 refresh: two cycles (cold, then warm-started) with the stability report; a failure at each stage or a
SIGKILL mid-training resumes to the state of a clean cycle; a finished cycle is a no-op; bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import dv365_ops
from dv365 import faults
from dv365.data import SynthConfig, generate, open_dataset, write_dataset
from dv365.refresh import STAGES, RefreshError, cosine_similarities, refresh, summarize
from dv365.store import open_store
from dv365.timeline import ID_FIELDS

TINY = SynthConfig(mean_length=200, num_items=300, num_authors=50, num_topics=20, users_per_shard=8,
                   examples_per_user=2, span_days=30.0)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("refresh")
    paths = {}
    for name, users, seed in (("d1", 20, 0), ("d2", 26, 1), ("raw-eval", 6, 2)):
        paths[name] = str(root / name)
        generate(users, seed=seed, config=TINY).write(paths[name])
    paths["eval"] = _held_out(root, paths)
    cfg = {
        "threads": 1, "device": "cpu",
        "data": {"path": "unused", "eval_path": paths["eval"], "batch_size": 8, "prefetch": 0},
        "model": {"dim": 8, "tower": {"name": "LCE", "args": {"num_out": 5}},
                  "backbone": {"embedding_dim": 8, "bottom_mlp": [8], "top_mlp": [8], "user_buckets": 31}},
        "schedule": {"steps": 3, "log_every": 1}, "checkpoint": {"every": 2, "keep": 2},
    }
    paths["config"] = str(root / "config.yaml")
    Path(paths["config"]).write_text(yaml.safe_dump(cfg))
    return paths


def _held_out(root: Path, paths: dict) -> str:
    """Held-out users whose ids every cycle's tables cover (ids folded into the smaller training vocabulary)."""
    small = {k: min(open_dataset(paths[d]).vocab_sizes[k] for d in ("d1", "d2")) for k in ID_FIELDS}
    raw = open_dataset(paths["raw-eval"])
    shards = []
    for k in range(raw.num_shards):
        shard = raw.read_shard(k)
        for kind in ("explicit", "implicit"):
            for field, n in small.items():
                shard.table(kind)[field] = shard.table(kind)[field] % n
        shard.examples["item_id"] = shard.examples["item_id"] % small["media_id"]
        for field in ("author_id", "topic_id"):
            shard.examples[field] = shard.examples[field] % small[field]
        shards.append(shard)
    write_dataset(root / "eval", shards)
    return str(root / "eval")


def _run(env: dict, tmp: Path, data: str, **kw) -> dict:
    return refresh(env["config"], env[data], str(tmp / "store"), state_dir=tmp / "state", part_size=8,
                   batch_size=8, progress=False, **kw)


def _snapshot(tmp: Path) -> dict:
    """What a cycle leaves behind: published versions, their records, model weights, the report's numbers."""
    state = json.loads((tmp / "state" / "refresh.json").read_text())
    with open_store(str(tmp / "store")) as st:
        versions = [(v.name, v.state) for v in st.versions()]
        records = {name: st.get(torch.arange(26), version=name).records.clone() for name, s in versions
                   if s == "published"}
        current = st.current()
    weights = [torch.load(c["stages"]["train"]["checkpoint"], weights_only=False)["model"] for c in state["cycles"]]
    reports = [json.loads(Path(c["stages"]["report"]["json"]).read_text()) for c in state["cycles"]]
    return {"versions": versions, "current": current, "records": records, "weights": weights,
            "stages": [sorted(c["stages"]) for c in state["cycles"]], "done": [c["done"] for c in state["cycles"]],
            "stability": [r["stability"] for r in reports], "ne": [r["ne"]["model"]["metrics"] for r in reports]}


def _same(a: dict, b: dict) -> None:
    for key in ("versions", "current", "stages", "done", "stability"):
        assert a[key] == b[key], key
    assert a["records"].keys() == b["records"].keys()
    for name in a["records"]:
        assert torch.equal(a["records"][name], b["records"][name]), name
    for wa, wb in zip(a["weights"], b["weights"]):
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.dumps(a["ne"], sort_keys=True) == json.dumps(b["ne"], sort_keys=True)


@pytest.fixture(scope="module")
def clean(env, tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("clean")
    first = _run(env, tmp, "d1")
    second = _run(env, tmp, "d2")
    return tmp, {"first": first, "second": second, "snapshot": _snapshot(tmp)}


def test_two_cycles_cold_then_warm_with_a_stability_report(env, clean):
    tmp, c = clean
    first, second = c["first"], c["second"]
    assert first["cycle"] == 1 and first["stages"]["train"]["warm_start_from"] is None
    assert "png" not in first["stages"]["report"]
    r1 = json.loads(Path(first["stages"]["report"]["json"]).read_text())
    assert r1["stability"] is None and "first cycle" in r1["stability_skipped"]
    assert second["cycle"] == 2 and second["stages"]["train"]["warm_start_from"] == first["stages"]["train"]["checkpoint"]
    report = json.loads(Path(second["stages"]["report"]["json"]).read_text())
    s = report["stability"]
    assert report["previous_version"] == "cycle-0001" and report["version"] == "cycle-0002"
    assert s["compared"] == 20 and s["only_new"] == 6 and s["only_old"] == 0 and sum(s["histogram"]["counts"]) == 20
    assert Path(second["stages"]["report"]["png"]).stat().st_size > 1000
    # the numbers, recomputed here in numpy from the published records
    with open_store(str(tmp / "store")) as st:
        old = st.get(torch.arange(20), version="cycle-0001").records.reshape(100, -1)
        new = st.get(torch.arange(20), version="cycle-0002").records.reshape(100, -1)
        assert st.current() == "cycle-0002"
    a = dv365_ops.int4_dequantize(old).reshape(20, -1).double().numpy()
    b = dv365_ops.int4_dequantize(new).reshape(20, -1).double().numpy()
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert s["mean"] == pytest.approx(cos.mean(), abs=1e-12)
    assert s["quantiles"]["p50"] == pytest.approx(np.median(cos), abs=1e-12)
    ne = report["ne"]
    assert "model" in ne and "baseline" in ne and any("delta" in k for k in ne)


def test_a_finished_cycle_is_a_noop(env, clean):
    tmp, c = clean
    again = _run(env, tmp, "d2")
    assert again["noop"] and again["cycle"] == 2
    _same(_snapshot(tmp), c["snapshot"])


@pytest.mark.parametrize("stage", STAGES)
def test_a_failure_at_each_stage_resumes_to_a_clean_end_state(env, clean, tmp_path, monkeypatch, stage):
    """The stage's work is done but not recorded (the worst moment); the rerun must neither redo nor duplicate."""
    _run(env, tmp_path, "d1")
    real = faults.checkpoint

    def fail(point: str) -> None:
        if point == f"refresh.{stage}":
            raise RuntimeError(f"injected failure after {point}")
        real(point)

    monkeypatch.setattr(faults, "checkpoint", fail)
    with pytest.raises(RuntimeError, match="injected"):
        _run(env, tmp_path, "d2")
    monkeypatch.setattr(faults, "checkpoint", real)
    state = json.loads((tmp_path / "state" / "refresh.json").read_text())
    assert not state["cycles"][1]["done"] and stage not in state["cycles"][1]["stages"]
    done = _run(env, tmp_path, "d2")
    assert done["done"] and not done["noop"]
    _same(_snapshot(tmp_path), clean[1]["snapshot"])


def test_sigkill_mid_training_then_rerun(env, clean, tmp_path):
    _run(env, tmp_path, "d1")
    code = ("import sys; from dv365.refresh import refresh; "
            f"refresh({env['config']!r}, {env['d2']!r}, {str(tmp_path / 'store')!r}, state_dir={str(tmp_path / 'state')!r}, "
            "part_size=8, batch_size=8, progress=False)")
    # train.step:3 is the last of the 3 steps: after the step-2 checkpoint, before the final one
    killed = subprocess.run([sys.executable, "-c", code], env={**os.environ, "DV365_FAULT": "train.step:3"},
                            capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert killed.returncode == -9, killed.stderr
    done = _run(env, tmp_path, "d2")
    assert done["done"]
    _same(_snapshot(tmp_path), clean[1]["snapshot"])


def test_an_unfinished_cycle_on_other_data_is_refused(env, tmp_path, monkeypatch):
    def fail(point: str) -> None:
        if point == "refresh.export":
            raise RuntimeError("injected")

    monkeypatch.setattr(faults, "checkpoint", fail)
    with pytest.raises(RuntimeError):
        _run(env, tmp_path, "d1")
    monkeypatch.undo()
    with pytest.raises(RefreshError, match=r"cycle 1 on .*d1 is unfinished \(stages done: train\)"):
        _run(env, tmp_path, "d2")
    with pytest.raises(RefreshError, match="another config .*schedule.steps"):
        _run(env, tmp_path, "d1", overrides=["schedule.steps=4"])


@pytest.mark.filterwarnings("ignore::dv365.data.IngestWarning")  # a small log: many short histories
def test_a_snapshot_that_renumbers_users_is_refused(tmp_path):
    # a log ingested again in another order gives the same raw users other dense ids: a refresh would publish their
    # embeddings under each other's ids, so it stops before any work; appended, or ingested with vocab_from, it runs
    from dv365.data import ingest
    from dv365.refresh import renumbered

    t0 = 1_700_000_000
    rows = [f"u{k % 12},i{(k * 7) % 40},{t0 + 1800 * k},{20 + k % 30},{10 + k % 40}\n" for k in range(600)]
    new = [f"u_new{k % 3},i{40 + k % 5},{t0 + 1800 * (600 + k)},30,20\n" for k in range(30)]
    head = "u,i,t,dur,dwell\n"
    m = {"user": "u", "item": "i", "timestamp": "t", "duration": "dur", "dwell": "dwell"}
    resorted = sorted(rows + new, key=lambda r: r.split(",")[0])
    for name, body in (("d1", rows), ("d2", rows + new), ("d2_sorted", resorted)):
        (tmp_path / f"{name}.csv").write_text(head + "".join(body))
        ingest(tmp_path / f"{name}.csv", tmp_path / name, m)
    assert renumbered(tmp_path / "d1", tmp_path / "d2") is None
    why = renumbered(tmp_path / "d1", tmp_path / "d2_sorted")
    assert why is not None and "users have another dense id" in why
    cfg = {"threads": 1, "device": "cpu", "data": {"path": "unused", "batch_size": 8, "prefetch": 0},
           "model": {"dim": 8, "tower": {"name": "LCE", "args": {"num_out": 5}},
                     "backbone": {"embedding_dim": 8, "bottom_mlp": [8], "top_mlp": [8], "user_buckets": 31}},
           "schedule": {"steps": 2, "log_every": 1}, "checkpoint": {"every": 2, "keep": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    kw = dict(state_dir=tmp_path / "state", part_size=8, batch_size=8, progress=False)
    store = str(tmp_path / "store")
    assert refresh(str(tmp_path / "c.yaml"), str(tmp_path / "d1"), store, **kw)["done"]
    with pytest.raises(RefreshError, match=r"users have another dense id .* so that ids stay: dv365 ingest .* --vocab-from"):
        refresh(str(tmp_path / "c.yaml"), str(tmp_path / "d2_sorted"), store, **kw)
    state = json.loads((tmp_path / "state" / "refresh.json").read_text())
    assert len(state["cycles"]) == 1  # refused before a cycle was recorded
    # the same re-sorted log ingested with the previous dataset's ids is refreshed
    ingest(tmp_path / "d2_sorted.csv", tmp_path / "d2_kept", m, vocab_from=tmp_path / "d1")
    assert renumbered(tmp_path / "d1", tmp_path / "d2_kept") is None
    assert refresh(str(tmp_path / "c.yaml"), str(tmp_path / "d2_kept"), store, **kw)["done"]


def test_config_comparison_takes_nan_as_equal():
    from dv365.refresh.cycle import _diff

    # two NaN objects (a config read twice): the same config, not a changed one
    a, b = {"data": {"fill_missing": float("nan"), "gap": 1}}, {"data": {"fill_missing": float("nan"), "gap": 1}}
    assert _diff(a, b) == []
    assert _diff({"data": {"fill_missing": float("nan")}}, {"data": {"fill_missing": 0.0}}) == ["data.fill_missing"]


def test_stability_numbers_on_a_hand_built_store(tmp_path):
    """cosine_similarities against numpy; the newer version has users the older one lacks (a grown snapshot)."""
    torch.manual_seed(0)
    x = torch.randn(7, 3, 16)
    y = x + 0.5 * torch.randn(7, 3, 16)
    y[2] = -x[2]
    with open_store(str(tmp_path / "s"), create=True) as st:
        for name, emb, users in (("a", x, torch.arange(5)), ("b", y, torch.arange(7))):
            rec = dv365_ops.int4_quantize(emb[users].reshape(-1, 16)).reshape(len(users), 3, -1)
            st.stage(name).write_part(0, users, rec)
            st.publish(name, {"num_tokens": 3, "dim": 16})
        sims, counts = cosine_similarities(st, "a", "b", batch=4)
        ea = st.lookup(torch.arange(5), version="a").embeddings.flatten(1).double().numpy()
        eb = st.lookup(torch.arange(5), version="b").embeddings.flatten(1).double().numpy()
    assert counts == {"compared": 5, "only_old": 0, "only_new": 2}
    ref = (ea * eb).sum(1) / np.linalg.norm(ea, axis=1) / np.linalg.norm(eb, axis=1)
    np.testing.assert_allclose(sims, ref, rtol=0, atol=1e-12)
    assert sims[2] == pytest.approx(-1.0, abs=1e-6)
    s = summarize(sims)
    assert s["users"] == 5 and sum(s["histogram"]["counts"]) == 5 and s["histogram"]["counts"][0] == 1
    assert s["min"] == pytest.approx(-1.0, abs=1e-6) and s["quantiles"]["p50"] == pytest.approx(np.median(ref))


def test_cli(env, tmp_path, capsys):
    from dv365.cli import main

    args = ["refresh", env["config"], "--store", str(tmp_path / "store"), "--state", str(tmp_path / "state"), "--quiet"]
    assert main([*args, "--data", env["d1"]]) == 0
    out = capsys.readouterr().out
    assert "cycle 1: published version cycle-0001" in out and str(tmp_path / "state" / "cycle-0001" / "stability.json") in out
    assert main([*args, "--data", env["d1"]]) == 0
    assert "is already done (version cycle-0001)" in capsys.readouterr().out
    assert main([*args, "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dv365 refresh: ") and "is not a dataset" in err
