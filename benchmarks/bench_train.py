"""One DV365 training step, stage by stage: where the time goes (paper 2.3: pooling + user tower + backbone).

Stages, each timed alone with a device sync around it (medians over the timed steps):
loader (one batch, no prefetch), host-to-device copy, pooling forward (the fused ``sliced_pool``), tower +
backbone forward and loss, their backward, the pooling backward (sparse rows or dense table gradients), the
dense optimizer and the sparse optimizer. Separate "whole step" rows time the step without the syncs, the loader
prefetching beside it (its batches built in worker processes and in threads, ``--loader-modes``), i.e. what
training runs at, and the model's step alone on batches already on the device.

    python benchmarks/bench_train.py                         # CPU size: 8 users of ~4,000 events, D = 64
    python benchmarks/bench_train.py --w40k                  # W40K: 32 users of 10k-70k events, D = 256, FSA (GPU)
    python benchmarks/bench_train.py --w40k --compile --out r.json
    python benchmarks/bench_train.py --w40k --bf16 --compile-mode reduce-overhead --out r.json   # CUDA graphs
    python benchmarks/bench_train.py --w40k --bf16 --compile-mode reduce-overhead --profile 3   # + the top kernels

``--profile N`` runs N more staged steps under torch.profiler and reports the top kernels (CUDA: self device
time) or ops (CPU: self CPU time), overall and per stage: a device event belongs to the stage whose range holds
its start (each stage syncs the device before its range closes, so its kernels run inside it).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import yaml

import dv365_ops  # noqa: F401
from dv365.data import Loader, SynthConfig, generate, open_dataset
from dv365.train import TrainConfig
from dv365.models.model import COMPILE_MODES
from dv365.train.trainer import build_model, build_optimizers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import environment  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    def __init__(self, device: torch.device):
        self.device, self.times = device, {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                _sync(timer.device)
                # a no-op unless a profiler runs; it names the stage's range in the trace (syncs inside it)
                self.rf = torch.profiler.record_function(STAGE_PREFIX + name)
                self.rf.__enter__()
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                _sync(timer.device)
                timer.times.setdefault(name, []).append(time.perf_counter() - self.t0)
                self.rf.__exit__(*exc)

        return _Ctx()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--w40k", action="store_true", help="the W40K workload (32 users, 10k-70k events, D = 256, 1M/200K/10K ids)")
    p.add_argument("--users", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--tower", default="FSA")
    p.add_argument("--tower-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a tower keyword argument (YAML value), e.g. head_dim=16 (FSA's default: ceil(width / heads))")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--dense-tables", action="store_true", help="dense table gradients instead of sparse rows")
    p.add_argument("--per-event-grads", action="store_true",
                   help="for comparison: sparse table gradients with one row per event (sliced_pool_backward_rows, "
                   "uncoalesced), the design before the touched-rows gradients")
    p.add_argument("--compile", action="store_true", help="torch.compile the tower + backbone")
    p.add_argument("--compile-mode", default=None, choices=COMPILE_MODES,
                   help="torch.compile's mode for the tower + backbone (implies --compile); reduce-overhead = CUDA graphs")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (default on CUDA)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default=None, help="an existing dataset (default: generate one)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="N more staged steps under torch.profiler: the top kernels (CUDA) or ops (CPU), overall and per stage")
    p.add_argument("--profile-top", type=int, default=25, help="rows of the profile tables")
    p.add_argument("--loader-modes", default="thread,process",
                   help="the loader's builders for the whole-step rows (comma list of thread, process); the first is "
                        "the result's step_ms (thread: the training default; a thread loader after a process one has "
                        "failed to pin memory on CUDA, see dv365.data.Loader)")
    p.add_argument("--host-profile", type=int, default=0, metavar="N",
                   help="N more model steps (batches on the device, no syncs) under cProfile: where the host's time "
                        "goes, by Python function")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.per_event_grads:
        _use_per_event_grads()
    w40k = args.w40k
    users = args.users or (64 if w40k else 16)
    batch = args.batch_size or (32 if w40k else 8)
    dim = args.dim or (256 if w40k else 64)
    bf16 = args.bf16 or device.type == "cuda"
    compile_mode = args.compile_mode or ("default" if args.compile else None)
    tower_args = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.tower_arg)}
    if w40k:  # lengths uniform-ish in 10k-70k around a 40k mean, W40K's id vocabularies
        synth = SynthConfig(mean_length=40_000, length_sigma=0.35, num_items=1_000_000, num_authors=200_000,
                            num_topics=10_000, users_per_shard=64, examples_per_user=1)
    else:
        synth = SynthConfig(mean_length=4_000, num_items=100_000, num_authors=10_000, num_topics=1_000,
                            users_per_shard=16, examples_per_user=1)
    with tempfile.TemporaryDirectory(prefix="dv365-bench-train-") as tmp:
        path = args.data or str(pathlib.Path(tmp) / "data")
        t0 = time.perf_counter()
        if args.data is None:
            generate(users, seed=0, config=synth).write(path)
        gen_s = time.perf_counter() - t0
        ds = open_dataset(path)
        cfg = TrainConfig.from_dict({
            "device": str(device), "autocast": "bf16" if bf16 else "off",
            "data": {"path": path, "batch_size": batch},
            "model": {"dim": dim, "sparse": not args.dense_tables, "tower": {"name": args.tower, "args": tower_args}},
        })
        torch.manual_seed(0)
        torch.sparse.check_sparse_tensor_invariants.disable()
        from dv365.spec import load_default_spec

        model = build_model(load_default_spec(), cfg.model, ds.vocab_sizes, device)
        optimizers = build_optimizers(model, cfg)
        if compile_mode is not None:
            model.compile_head(mode=compile_mode)
        # the loader stage: one batch built in this process, nothing ahead
        loader = Loader(ds, batch, cfg.data.gap, shuffle=False, prefetch=0, drop_last=True, workers=1, mode="thread")
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else torch.autocast(device.type, enabled=False)
        timer = Timer(device)
        events: list[int] = []

        def batches():
            while True:
                yield from loader

        it = batches()
        a = cfg.model.watch_time_weight
        def staged_step() -> None:
            with timer("loader (1 batch, no prefetch)"):
                b = next(it)
            with timer("host-to-device copy"):
                b = b.to(device, non_blocking=True)
            ex = b.examples
            with timer("pooling forward (sliced_pool)"), autocast:
                pooled = model.pooling(b.explicit, b.implicit, ex.request_ts)
            leaf = pooled.detach().requires_grad_()
            with timer("tower + backbone forward, loss"), autocast:
                lengths = torch.stack([b.explicit.offsets.diff(), b.implicit.offsets.diff()], dim=1)
                logits, watch, emb = model.run_head(leaf, lengths, ex)
                from dv365.models import ModelOutput

                loss = model.total_loss(*model.loss_terms(ModelOutput(logits, watch, emb), b), a)
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            with timer("tower + backbone backward"):
                loss.backward()
            with timer("pooling backward"):
                pooled.backward(leaf.grad)
            with timer("dense optimizer"):
                optimizers["dense"].step()
            if "sparse" in optimizers:
                with timer("sparse optimizer (tables)"):
                    optimizers["sparse"].step()
            events.append((int(b.explicit.offsets[-1]) + int(b.implicit.offsets[-1])) / len(ex))


        for step in range(args.steps + 2):  # two warm-up steps (compile, allocator)
            staged_step()
            if step < 2:
                timer.times.clear()
                events.clear()
        profile = None
        if args.profile:  # more staged steps, kept out of the timings
            kept = ({k: list(v) for k, v in timer.times.items()}, len(events))
            try:
                profile = _profile(staged_step, device, args.profile, args.profile_top)
            except Exception as e:  # the timings still count when the profiler fails
                print(f"--profile failed: {type(e).__name__}: {e}", file=sys.stderr)
            timer.times = kept[0]
            del events[kept[1]:]

        # the whole step as training runs it: no syncs between stages, the loader prefetching (its batches built
        # in worker processes or in threads: threads take the GIL from the step's kernel dispatch)
        modes = [m for m in args.loader_modes.split(",") if m]

        def whole_steps() -> float:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                _step(model, optimizers, next(it).to(device, non_blocking=True), autocast, a)
            _sync(device)
            return (time.perf_counter() - t0) / args.steps

        step_by_mode: dict[str, float] = {}
        for mode in modes:
            loader.close()
            loader = Loader(ds, batch, cfg.data.gap, shuffle=False, prefetch=2, drop_last=True, mode=mode)
            it = batches()
            for b in [next(it) for _ in range(2)]:
                _step(model, optimizers, b.to(device), autocast, a)
            _sync(device)
            # as `dv365 train` runs on CUDA: the ops' data checks deferred to the log step (dv365_ops.deferred), so
            # no op synchronises
            with dv365_ops.deferred_checks(device.type == "cuda"):
                step_by_mode[f"{mode} ({loader.workers} workers)"] = whole_steps()
        step_s = next(iter(step_by_mode.values()))
        # then with every op checking its input at the call
        step_checked_s = whole_steps() if device.type == "cuda" else step_s
        # the model's step alone (pooling + tower + backbone + optimizers, what the 12 ms target counts): batches
        # already on the device, cycled, so neither the loader nor the copy can hold it up (with a small dataset
        # every epoch restarts the loader's prefetch, which the steps above then wait for)
        on_device = [next(it).to(device) for _ in range(min(args.steps, 8))]
        _sync(device)
        with dv365_ops.deferred_checks(device.type == "cuda"):
            t0 = time.perf_counter()
            for i in range(args.steps):
                _step(model, optimizers, on_device[i % len(on_device)], autocast, a)
            _sync(device)
        model_step_s = (time.perf_counter() - t0) / args.steps
        host_profile = None
        if args.host_profile:
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            with dv365_ops.deferred_checks(device.type == "cuda"):
                prof.enable()
                for i in range(args.host_profile):
                    _step(model, optimizers, on_device[i % len(on_device)], autocast, a)
                _sync(device)
                prof.disable()
            buf = io.StringIO()
            stats = pstats.Stats(prof, stream=buf)
            stats.sort_stats("tottime").print_stats(args.profile_top)
            stats.sort_stats("cumulative").print_stats(args.profile_top)
            host_profile = f"{args.host_profile} model steps (ms are totals over them)\n" + buf.getvalue()
        del on_device

    med = {k: statistics.median(v) for k, v in timer.times.items()}
    compute = sum(v for k, v in med.items() if not k.startswith("loader"))
    rows = [{"stage": k, "ms": v * 1e3, "share_of_step": v / compute if not k.startswith("loader") else None}
            for k, v in med.items()]
    info = {"environment": environment(), "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "workload": "W40K" if w40k else "cpu", "users_in_data": ds.num_users, "examples_in_data": sum(ds.manifest["shards"][k]["files"]["examples"]["rows"] for k in range(len(ds.manifest["shards"]))), "batch": batch, "dim": dim,
            "tower": args.tower, "tower_args": tower_args, "sparse_tables": not args.dense_tables, "bf16": bf16, "compile": compile_mode is not None,
            "compile_mode": compile_mode, "per_event_grads": args.per_event_grads, "cudagraph_skips": _cudagraph_skips(),
            "mean_events_per_example": float(np.mean(events)), "generate_s": gen_s,
            "params": sum(p.numel() for p in model.parameters()),
            "table_params": sum(p.numel() for p in model.pooling.tables.values())}
    result = {"info": info, "stages": rows, "sum_of_stages_ms": compute * 1e3, "step_ms": step_s * 1e3,
              "step_ms_by_loader_mode": {k: v * 1e3 for k, v in step_by_mode.items()},
              "step_checked_at_the_call_ms": step_checked_s * 1e3, "model_step_ms": model_step_s * 1e3,
              "examples_per_s": batch / step_s}
    if profile is not None:
        result["profile"] = profile
    print(f"# training step, {info['workload']} ({batch} examples of {info['mean_events_per_example']:,.0f} events, "
          f"D = {dim}, {args.tower}, {'sparse' if not args.dense_tables else 'dense'} tables, "
          f"{'bf16' if bf16 else 'fp32'}{f', compiled ({compile_mode})' if compile_mode else ''}) on {info['gpu'] or 'CPU'}")
    print(f"\n{info['environment']}\n")
    print("| stage | ms | share of the step's compute |")
    print("| --- | ---: | ---: |")
    for r in rows:
        share = f"{100 * r['share_of_step']:.0f} %" if r["share_of_step"] is not None else "(overlapped)"
        print(f"| {r['stage']} | {r['ms']:.2f} | {share} |")
    print(f"| **sum of the compute stages** | **{compute * 1e3:.2f}** | |")
    for mode, t in step_by_mode.items():
        print(f"| **whole step, no syncs, loader prefetching: {mode}** | **{t * 1e3:.2f}** | "
              f"{batch / t:,.0f} examples/s |")
    if device.type == "cuda":
        print(f"| whole step, each op checking its input at the call (a sync each; loader: {modes[-1]}) | "
              f"{step_checked_s * 1e3:.2f} | {batch / step_checked_s:,.0f} examples/s |")
    print(f"| **the model's step alone: batches already on the device, no syncs** | **{model_step_s * 1e3:.2f}** | "
          f"{batch / model_step_s:,.0f} examples/s |")
    if info["cudagraph_skips"]:
        print(f"\nCUDA graphs were skipped {info['cudagraph_skips']} time(s) (TORCH_LOGS=perf_hints says why)")
    if profile is not None:
        _print_profile(profile)
    if host_profile is not None:
        print(f"\n## host profile (cProfile): {host_profile}")
        result["host_profile"] = host_profile
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


STAGE_PREFIX = "stage: "


def _profile(staged_step, device: torch.device, steps: int, top: int) -> dict:
    """``steps`` staged steps under torch.profiler: per kernel (CUDA; self device time) or op (CPU; self CPU time)
    name, the total ms per step and the calls per step, overall and per stage, each list the ``top`` largest."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            staged_step()
        _sync(device)
    events = list(prof.events())
    stages = sorted((e.time_range.start, e.time_range.end, e.name[len(STAGE_PREFIX):]) for e in events
                    if e.name.startswith(STAGE_PREFIX) and e.device_type == DeviceType.CPU)
    starts = [r[0] for r in stages]

    def stage_of(t: float) -> str:
        import bisect

        i = bisect.bisect_right(starts, t) - 1
        return stages[i][2] if i >= 0 and t <= stages[i][1] else "(outside the stages)"

    overall: dict[str, list] = {}
    per_stage: dict[str, dict[str, list]] = {}
    host: dict[str, list] = {}  # CUDA: the host's self CPU time per op (syncs show as the op that waited)
    for e in events:
        if e.name.startswith(STAGE_PREFIX):
            continue
        if cuda and e.device_type == DeviceType.CPU:
            entry = host.setdefault(f"{stage_of(e.time_range.start)}: {e.name}", [0.0, 0])
            entry[0] += e.self_cpu_time_total
            entry[1] += 1
        if cuda:
            if e.device_type != DeviceType.CUDA:
                continue
            us = e.time_range.elapsed_us()
        else:
            if e.device_type != DeviceType.CPU:
                continue
            us = e.self_cpu_time_total
        for table in (overall, per_stage.setdefault(stage_of(e.time_range.start), {})):
            entry = table.setdefault(e.name, [0.0, 0])
            entry[0] += us
            entry[1] += 1

    def rows(table: dict[str, list]) -> list[dict]:
        out = [{"name": k, "ms_per_step": v[0] / 1e3 / steps, "calls_per_step": v[1] / steps} for k, v in table.items()]
        return sorted(out, key=lambda r: -r["ms_per_step"])[:top]

    totals = {k: sum(v[0] for v in t.values()) / 1e3 / steps for k, t in per_stage.items()}
    return {"steps": steps, "time": "self device time of each kernel" if cuda else "self CPU time of each op",
            "overall": rows(overall), "stage_totals_ms": totals, "host": rows(host) if cuda else [],
            "stages": {k: rows(t) for k, t in sorted(per_stage.items(), key=lambda kv: -totals[kv[0]])}}


def _print_profile(profile: dict) -> None:
    def table(rows: list[dict]) -> None:
        print("| kernel / op | ms per step | calls per step |")
        print("| --- | ---: | ---: |")
        for r in rows:
            name = r["name"] if len(r["name"]) <= 100 else r["name"][:97] + "..."
            print(f"| `{name.replace('|', '/')}` | {r['ms_per_step']:.3f} | {r['calls_per_step']:.1f} |")

    print(f"\n## profile: {profile['time']}, {profile['steps']} staged steps\n\n### overall\n")
    table(profile["overall"])
    for stage, rows in profile["stages"].items():
        print(f"\n### {stage}: {profile['stage_totals_ms'][stage]:.2f} ms per step\n")
        table(rows[:12])
    if profile.get("host"):
        print("\n### the host: self CPU time of each op, by stage\n")
        table(profile["host"])


def _use_per_event_grads() -> None:
    import dv365_ops.slicing as slicing
    from dv365_ops import _backend

    def per_event(grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, num_rows):
        op = _backend.resolve("sliced_pool_backward_rows", grad.device)
        rows = op(grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f)
        return [torch.sparse_coo_tensor(i[None], r, (n, grad.shape[2]), check_invariants=False)
                for i, r, n in zip(ids, rows, num_rows)]

    slicing._sparse_table_grads = per_event


def _cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def _step(model, optimizers, b, autocast, a) -> None:
    with autocast:
        out = model(b)
    loss = model.total_loss(*model.loss_terms(out, b), a)
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers.values():
        opt.step()


if __name__ == "__main__":
    sys.exit(main())
