"""dv365.train: config errors, a run end to end, exact resume after SIGKILL, warm start, DDP (gloo) vs one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from dv365.configs import ConfigError
from dv365.data import TASKS, DataError, SynthConfig, generate, procs
from dv365.train import CheckpointError, TrainConfig, load_checkpoint, load_config, train
from dv365.train.checkpoint import list_checkpoints

TINY = SynthConfig(mean_length=300, num_items=400, num_authors=60, num_topics=24, users_per_shard=8,
                   examples_per_user=4, span_days=60.0)


def _dataset(root: Path, users: int, seed: int) -> str:
    path = root / f"data-{users}-{seed}"
    if not (path / "manifest.json").exists():  # other users, one catalogue: item ids mean the same items
        generate(users, seed=seed, config=TINY, catalogue_seed=0).write(path, overwrite=True)
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("train-data")
    return {"train": _dataset(root, 24, 0), "eval": _dataset(root, 8, 1), "new": _dataset(root, 24, 2)}


def _config(data: dict[str, str], run_dir: Path, **over) -> dict:
    cfg = {
        "run_dir": str(run_dir),
        "device": "cpu",  # bitwise resume and the gloo comparison are CPU claims (CUDA atomics reorder sums)
        "threads": 1,
        "data": {"path": data["train"], "batch_size": 8, "prefetch": 0},
        "model": {"dim": 8, "tower": {"name": "LCE", "args": {"num_out": 6}},
                  "backbone": {"embedding_dim": 8, "bottom_mlp": [16], "top_mlp": [16], "user_buckets": 101}},
        "schedule": {"steps": 12, "log_every": 2},
        "checkpoint": {"every": 4, "keep": 3},
    }
    for key, value in over.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def _write(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run_cli(args: list[str], env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    # outside the source tree, as a user runs it (`python -m` puts the working directory first on sys.path)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dv365.cli", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=tempfile.gettempdir())


# ---- config -----------------------------------------------------------------------------------------------------

def test_config_defaults_round_trip():
    cfg = TrainConfig()
    again = TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg


def test_config_overrides(tmp_path):
    path = _write({"schedule": {"steps": 7}}, tmp_path / "c.yaml")
    cfg = load_config(str(path), ["schedule.steps=9", "model.tower.name=LCE", "data.max_events=null", "optim.dense.lr=0.01"])
    assert cfg.schedule.steps == 9 and cfg.model.tower.name == "LCE" and cfg.data.max_events is None
    assert cfg.optim.dense.lr == 0.01


@pytest.mark.parametrize(
    "data, match",
    [
        ({"schedule": {"stpes": 3}}, r"schedule\.stpes.*did you mean 'steps'"),
        ({"modle": {}}, r"'modle' is unknown"),
        ({"data": {"batch_size": "big"}}, r"data\.batch_size: expected an integer"),
        ({"optim": {"dense": {"name": "lion", "lr": 1.0}}}, r"optim\.dense\.name must be one of"),
        ({"schedule": {"steps": 0}}, r"schedule\.steps must be >= 1"),
        ({"compile": True, "compile_mode": "reduce_overhead"}, r"compile_mode must be one of default, reduce-overhead"),
        ({"compile_mode": "reduce-overhead"}, r"compile_mode 'reduce-overhead' needs compile: true"),
        ({"data": {"loader_mode": "fork"}}, r"data\.loader_mode must be auto, process or thread, got 'fork'"),
        ({"data": {"workers": 0}}, r"data\.workers must be >= 1, got 0"),
    ],
)
def test_config_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(data)


def test_unknown_tower_fails_before_work(data, tmp_path):
    with pytest.raises(ConfigError, match="unknown tower 'FSB' .*did you mean 'FSA'"):
        TrainConfig.from_dict(_config(data, tmp_path / "run", **{"model.tower.name": "FSB"}))


def test_data_without_manifest(data, tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = TrainConfig.from_dict(_config(data, tmp_path / "run", **{"data.path": str(tmp_path / "empty")}))
    with pytest.raises(DataError, match="manifest"):
        train(cfg, progress=False)


def test_eval_data_beyond_the_tables_fails_before_work(data, tmp_path):
    import dataclasses

    bigger = tmp_path / "bigger"
    generate(4, seed=3, config=dataclasses.replace(TINY, num_items=4000)).write(bigger)
    cfg = TrainConfig.from_dict(_config(data, tmp_path / "run", **{"data.eval_path": str(bigger)}))
    with pytest.raises(CheckpointError, match=r"data\.eval_path: .* has ids beyond the tables .*media_id"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_unknown_durations_need_fill_missing_named_as_the_config_key(data, tmp_path):
    # an ingested log without durations or dwell times (nulls): the error names the config key and the YAML NaN,
    # not the loader's Python argument, before any work; with the override the same config trains
    from dv365.data import ingest

    log = tmp_path / "log.csv"
    log.write_text("u,i,t,a\n" + "".join(f"{k % 3},{k % 7},{1_600_000_000 + 86_400 * k},{'like' if k % 5 else 'view'}\n"
                                         for k in range(60)))
    ingest(log, tmp_path / "ds", {"user": "u", "item": "i", "timestamp": "t", "action": "a"}, examples_per_user=8)
    path = _write(_config(data, tmp_path / "run", **{"data.path": str(tmp_path / "ds"), "schedule.steps": 2}),
                  tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"data\.path .*ds has unknown implicit video_duration, dwell_time .*"
                                          r"set data\.fill_missing: \.nan"):
        train(load_config(str(path)), progress=False)
    assert not (tmp_path / "run").exists()
    cfg = load_config(str(path), ["data.fill_missing=.nan"])
    assert cfg.data.fill_missing != cfg.data.fill_missing  # NaN
    train(cfg, progress=False)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 2


def test_cli_errors_are_messages_not_tracebacks(data, tmp_path):
    path = _write(_config(data, tmp_path / "run", **{"schedule.stpes": 3}), tmp_path / "bad.yaml")
    res = _run_cli(["train", str(path), "--quiet"])
    assert res.returncode != 0
    assert "did you mean 'steps'" in res.stderr


# ---- a run end to end -----------------------------------------------------------------------------------------------

def test_train_end_to_end(data, tmp_path):
    cfg = TrainConfig.from_dict(_config(data, tmp_path / "run", **{"data.eval_path": data["eval"], "schedule.steps": 24}))
    result = train(cfg, progress=False)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 24 and len(metrics["history"]) == 12
    assert (run / "loss_curve.png").stat().st_size > 1000
    assert [p.name for p in list_checkpoints(run)] == ["step-00000016.pt", "step-00000020.pt", "step-00000024.pt"]
    ev = result["eval"]
    assert set(ev) == {*TASKS, "watch_time"}
    assert all(ev[t]["count"] > 0 for t in ev)
    first, last = metrics["history"][0]["loss"], metrics["history"][-1]["loss"]
    assert last < first, (first, last)


def _params(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("fault,loader_mode", [("train.step:7", "thread"), ("checkpoint.before_rename:2", "thread"),
                                               ("train.step:7", "process")])
def test_sigkill_and_resume_is_exact(data, tmp_path, fault, loader_mode):
    if loader_mode == "process" and not procs.available():
        pytest.skip("worker processes need Linux")
    straight = TrainConfig.from_dict(_config(data, tmp_path / "straight", **{"data.shuffle": True}))
    train(straight, progress=False)
    # the killed run's batches may come from the loader's worker processes: the same batches as threads'
    over = {"data.shuffle": True, "data.loader_mode": loader_mode, "data.workers": 2}
    cfg_path = _write(_config(data, tmp_path / "killed", **over), tmp_path / "k.yaml")
    res = _run_cli(["train", str(cfg_path), "--quiet"], env={"DV365_FAULT": fault})
    assert res.returncode == -9, res.stderr[-2000:]
    survivors = list_checkpoints(tmp_path / "killed")
    assert survivors and load_checkpoint(survivors[-1])["step"] < 12
    assert not list((tmp_path / "killed" / "checkpoints").glob("step-*.pt.tmp*"))
    res = _run_cli(["train", str(cfg_path), "--quiet"])
    assert res.returncode == 0, res.stderr[-2000:]
    _assert_bitwise(_params(tmp_path / "straight"), _params(tmp_path / "killed"))
    straight_hist = json.loads((tmp_path / "straight" / "metrics.json").read_text())["history"]
    killed_hist = json.loads((tmp_path / "killed" / "metrics.json").read_text())["history"]
    assert [h["step"] for h in killed_hist] == [h["step"] for h in straight_hist]
    assert [h["loss"] for h in killed_hist] == [h["loss"] for h in straight_hist]


def test_resume_refuses_another_spec(data, tmp_path):
    cfg = TrainConfig.from_dict(_config(data, tmp_path / "run", **{"schedule.steps": 4}))
    train(cfg, progress=False)
    from dv365.spec import load_default_spec

    spec = load_default_spec()
    smaller = type(spec)(slices=spec.slices[:20], tables=spec.tables, dim=spec.dim)
    (tmp_path / "spec.yaml").write_text(smaller.to_yaml())
    other = TrainConfig.from_dict(_config(data, tmp_path / "run", **{"spec": str(tmp_path / "spec.yaml"), "schedule.steps": 8}))
    with pytest.raises(CheckpointError, match="another slice spec"):
        train(other, progress=False)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        train(cfg, progress=False, resume=False)


def test_warm_start_reaches_cold_loss_sooner(data, tmp_path):
    steps = 30
    base = TrainConfig.from_dict(_config(data, tmp_path / "old", **{"schedule.steps": 40}))
    train(base, progress=False)
    over = {"data.path": data["new"], "schedule.steps": steps, "schedule.log_every": 1, "checkpoint.every": 100}
    cold = train(TrainConfig.from_dict(_config(data, tmp_path / "cold", **over)), progress=False)
    warm = train(TrainConfig.from_dict(_config(data, tmp_path / "warm", **over)), init_from=str(tmp_path / "old"),
                 progress=False)

    def smooth(hist):  # mean of 5 steps: one batch's loss is noisy
        losses = [h["loss"] for h in hist]
        return [sum(losses[max(0, i - 4): i + 1]) / len(losses[max(0, i - 4): i + 1]) for i in range(len(losses))]

    cold_s, warm_s = smooth(cold["history"]), smooth(warm["history"])
    target = cold_s[-1]
    reached = next(i for i, v in enumerate(warm_s) if v <= target) if min(warm_s) <= target else None
    assert reached is not None and reached < steps - 1, (target, warm_s)
    assert warm_s[4] < cold_s[4]


def test_ddp_two_processes_match_one(data, tmp_path):
    over = {"data.shuffle": False, "schedule.steps": 6, "checkpoint.every": 6}
    one = _config(data, tmp_path / "one", **over, **{"data.batch_size": 8})
    train(TrainConfig.from_dict(one), progress=False)
    two_path = _write(_config(data, tmp_path / "two", **over, **{"data.batch_size": 4}), tmp_path / "two.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dv365.cli", "train", str(two_path), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _params(tmp_path / "one"), _params(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=k)
    assert load_checkpoint(tmp_path / "two")["world_size"] == 2


def _sparse_grads_of(rank: int) -> list[torch.Tensor | None]:
    """Rank ``rank``'s gradients for the average test: uneven sizes, repeated rows, an empty one, a missing one,
    two widths and two dtypes."""
    g = torch.Generator().manual_seed(100 + rank)

    def sparse(rows, n, shape, dtype=torch.float32):
        idx = torch.randint(0, rows, (n,), generator=g)
        return torch.sparse_coo_tensor(idx[None], torch.randn(n, *shape[1:], generator=g).to(dtype), shape)

    return [sparse(30, 7 + 5 * rank, (30, 4)), sparse(12, 3 * rank, (12, 4)), None if rank else sparse(9, 4, (9, 4)),
            sparse(50, 11, (50, 6)), sparse(20, 5 + rank, (20, 4), torch.float64)]


def _average_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from dv365.train.distributed import DistInfo, average_sparse_grads

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        shapes = [(30, 4), (12, 4), (9, 4), (50, 6), (20, 4)]
        dtypes = [torch.float32] * 4 + [torch.float64]
        params = [torch.nn.Parameter(torch.zeros(s, dtype=d)) for s, d in zip(shapes, dtypes)]
        for p, grad in zip(params, _sparse_grads_of(rank)):
            p.grad = grad
        average_sparse_grads(params, DistInfo(rank, world, rank))
        torch.save([p.grad.to_dense() for p in params], os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sparse_grads_averaged_over_two_gloo_processes(tmp_path):
    """Every rank ends with the mean over ranks of every table's gradient (dense-equal), whatever each rank's row
    count (none, repeated rows, a missing gradient), with tables of two widths and two dtypes in one call."""
    from gloo_helpers import run_gloo_processes

    run_gloo_processes(_average_worker, tmp_path, "the 2-process average", timeout=90)
    shapes = [(30, 4), (12, 4), (9, 4), (50, 6), (20, 4)]
    expected = []
    for k, shape in enumerate(shapes):
        dense = [g.to_dense() if g is not None else torch.zeros(shape) for g in (_sparse_grads_of(r)[k] for r in (0, 1))]
        expected.append((dense[0] + dense[1].to(dense[0].dtype)) / 2)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for k, (a, b) in enumerate(zip(got, expected)):
            torch.testing.assert_close(a, b.to(a.dtype), msg=f"rank {rank}, table {k}")


def test_rowwise_adagrad_matches_its_formula():
    from dv365.train.optim import RowWiseAdagrad

    rows, dim, lr = 40, 6, 0.1
    start = torch.randn(rows, dim, dtype=torch.float64)
    sparse_p, dense_p = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opts = [RowWiseAdagrad([sparse_p], lr=lr), RowWiseAdagrad([dense_p], lr=lr)]
    acc, w = torch.zeros(rows, dtype=torch.float64), start.clone()
    for _ in range(3):
        idx = torch.randint(0, rows // 2, (100,))  # duplicates; half the rows never touched
        vals = torch.randn(100, dim, dtype=torch.float64)
        sparse_p.grad = torch.sparse_coo_tensor(idx[None], vals, (rows, dim), check_invariants=False)
        g = torch.zeros(rows, dim, dtype=torch.float64).index_add_(0, idx, vals)
        dense_p.grad = g.clone()
        for o in opts:
            o.step()
        touched = torch.unique(idx)
        acc[touched] += g[touched].square().mean(1)
        w[touched] -= lr * g[touched] / (acc[touched].sqrt() + 1e-10)[:, None]
    torch.testing.assert_close(sparse_p.detach(), w)
    torch.testing.assert_close(dense_p.detach(), w)
    assert opts[0].state[sparse_p]["sum"].shape == (rows,)
    assert torch.equal(sparse_p.detach()[rows // 2:], start[rows // 2:])


@pytest.mark.parametrize("kind", ["sorted unique", "sorted with duplicates", "unsorted unique"])
def test_rowwise_adagrad_uses_sorted_unique_rows_as_they_are(kind):
    """A sparse gradient not flagged coalesced (autograd's accumulation drops the flag of the pooling op's) is
    taken as it is only when its indices are strictly increasing; otherwise its duplicates are summed."""
    from dv365.train.optim import RowWiseAdagrad

    rows, dim, lr = 50, 5, 0.1
    idx = {"sorted unique": torch.tensor([0, 3, 4, 17, 49]), "sorted with duplicates": torch.tensor([1, 3, 3, 8, 8]),
           "unsorted unique": torch.tensor([9, 2, 30, 5, 1])}[kind]
    vals = torch.randn(idx.numel(), dim, dtype=torch.float64)
    start = torch.randn(rows, dim, dtype=torch.float64)
    p = torch.nn.Parameter(start.clone())
    p.grad = torch.sparse_coo_tensor(idx[None], vals, (rows, dim), check_invariants=False)
    assert not p.grad.is_coalesced()
    RowWiseAdagrad([p], lr=lr).step()
    g = torch.zeros(rows, dim, dtype=torch.float64).index_add_(0, idx, vals)
    touched = torch.unique(idx)
    w = start.clone()
    w[touched] -= lr * g[touched] / (g[touched].square().mean(1).sqrt() + 1e-10)[:, None]
    torch.testing.assert_close(p.detach(), w)
    assert p.grad.is_coalesced() == (kind == "sorted unique")


def test_rowwise_adagrad_shares_unique_rows_between_tables_on_one_index_tensor():
    from dv365.train.optim import RowWiseAdagrad

    rows, dim = 30, 4
    idx = torch.randint(0, rows, (50,))
    a, b = (torch.nn.Parameter(torch.randn(rows, dim, dtype=torch.float64)) for _ in range(2))
    solo = [torch.nn.Parameter(p.detach().clone()) for p in (a, b)]
    shared = RowWiseAdagrad([a, b], lr=0.1)
    alone = [RowWiseAdagrad([p], lr=0.1) for p in solo]
    for _ in range(2):
        ga, gb = torch.randn(50, dim, dtype=torch.float64), torch.randn(50, dim, dtype=torch.float64)
        for p, g in ((a, ga), (b, gb), (solo[0], ga), (solo[1], gb)):
            # one index tensor for both tables, as the fused op returns for tables pooling one id column
            p.grad = torch.sparse_coo_tensor(idx[None], g, (rows, dim), check_invariants=False)
        shared.step()
        for o in alone:
            o.step()
    torch.testing.assert_close(a.detach(), solo[0].detach(), rtol=0, atol=0)
    torch.testing.assert_close(b.detach(), solo[1].detach(), rtol=0, atol=0)


def _rowwise_pair(device, dtype, wd, sparse, fused_first=True):
    """Two copies of a table, one updated by the fused Triton kernel and one by the torch ops (fused=False), over
    three steps of sparse (coalesced touched rows, or repeated unsorted rows) or dense (None) gradients."""
    from dv365.train.optim import RowWiseAdagrad

    g = torch.Generator().manual_seed(7)
    rows, dim, lr = 300, 37, 0.07  # an odd width: the kernel's column mask
    start = torch.randn(rows, dim, generator=g).to(dtype)
    fused_p, torch_p = (torch.nn.Parameter(start.clone().to(device)) for _ in range(2))
    fused = RowWiseAdagrad([fused_p], lr=lr, weight_decay=wd, fused=True)
    plain = RowWiseAdagrad([torch_p], lr=lr, weight_decay=wd, fused=False)
    for step in range(3):
        idx = torch.unique(torch.randint(0, rows, (120,), generator=g)).to(device)
        vals = (torch.randn(idx.numel(), dim, generator=g) * (step + 1)).to(device, dtype)
        if sparse == "repeated":  # nn.Embedding's: one row per lookup, unsorted, repeated rows
            idx = torch.randint(0, rows, (120,), generator=g).to(device)
            vals = (torch.randn(idx.numel(), dim, generator=g) * (step + 1)).to(device, dtype)
        for p in (fused_p, torch_p):
            p.grad = (torch.sparse_coo_tensor(idx[None], vals, (rows, dim), is_coalesced=sparse == "coalesced")
                      if sparse else torch.zeros(rows, dim, device=device, dtype=dtype).index_add_(0, idx, vals))
        fused.step()
        plain.step()
    return fused_p, torch_p, fused.state[fused_p]["sum"], plain.state[torch_p]["sum"], start.to(device), idx


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("wd", [0.0, 0.03])
@pytest.mark.parametrize("sparse", ["coalesced", "repeated", None])
def test_fused_rowwise_adagrad_matches_the_torch_update(dtype, wd, sparse):
    """The Triton kernel (under TRITON_INTERPRET=1 on the CPU, on the GPU when there is one) against the torch ops
    of the same optimizer: the accumulator up to the order a row's mean sums in, the weights to the rounding of
    the table's dtype (the interpreter rounds to bfloat16 by truncation, the GPU to nearest)."""
    triton = pytest.importorskip("triton")  # noqa: F841
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton kernel runs on the CPU only under TRITON_INTERPRET=1")
    fused_p, torch_p, fused_acc, torch_acc, start, _ = _rowwise_pair(device, dtype, wd, sparse)
    # bf16 with weight decay: the weights' rounding reaches the next step's gradient, so the accumulator
    torch.testing.assert_close(fused_acc, torch_acc, rtol=2e-2 if dtype == torch.bfloat16 else 2e-6, atol=0)
    tol = {torch.float32: (2e-6, 1e-6), torch.float64: (2e-6, 1e-6), torch.bfloat16: (3 * 2**-7, 1e-2)}[dtype]  # bf16: an ulp a step
    torch.testing.assert_close(fused_p.detach(), torch_p.detach(), rtol=tol[0], atol=tol[1])
    assert not torch.equal(fused_p.detach(), start)  # the step did something
    untouched = torch_acc == 0
    if sparse:  # rows no step touched keep their weights and a zero accumulator
        assert untouched.any() and torch.equal(fused_p.detach()[untouched], start[untouched])
        assert torch.equal(fused_acc[untouched], torch_acc[untouched])


def test_fused_rowwise_adagrad_is_not_used_on_the_cpu():
    """fused=None (the default) keeps the torch ops on the CPU: bitwise resume there relies on them."""
    from dv365.train.optim import RowWiseAdagrad

    p = torch.nn.Parameter(torch.randn(4, 3))
    assert not RowWiseAdagrad([p])._fused(p)
