"""The paper's table 2 on dv365's synthetic data: each user tower against a short-history baseline.

Trains the baseline (the same backbone and an LCE tower fed only each timeline's last ``--short-events`` events)
and each of the seven towers of table 1 on the full history, all with the same data, seed, steps and
optimizer, then evaluates them on held-out users and reports the relative NE delta of every task (and the
watch-time MSE delta) against the baseline. The synthetic data plants a long-history signal: candidates from
dormant long-term interests that only the distant history shows (see ``dv365.data.synth``).

    python benchmarks/experiments/towers.py --out benchmarks/results/experiment_towers

writes ``<out>.md`` (the table, with the command, data sizes, seeds and commit) and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dv365.data import TASKS, SynthConfig, generate
from dv365.metrics import relative_deltas
from dv365.train import TrainConfig, train
from dv365.train.evaluate import evaluate_model
from dv365.data import open_dataset

TOWERS = ("pass_thru", "LCE", "MLP_d", "MLP_t", "T-L_d", "T-L_t", "FSA")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _config(args, run_dir: Path, data: Path, tower: str, seed: int, max_events: int | None) -> TrainConfig:
    tower_args = {"num_out": args.num_out} if tower not in ("pass_thru",) else {}
    return TrainConfig.from_dict({
        "run_dir": str(run_dir),
        "seed": seed,
        "threads": args.threads,
        "device": args.device,
        "data": {"path": str(data), "batch_size": args.batch_size, "max_events": max_events, "prefetch": 2},
        "model": {"dim": args.dim, "tower": {"name": tower, "args": tower_args},
                  "backbone": {"embedding_dim": args.dim, "bottom_mlp": [64], "top_mlp": [64, 32],
                               "user_buckets": 0}},
        "optim": {"dense": {"lr": args.lr}, "sparse": {"lr": args.sparse_lr}},
        "schedule": {"steps": args.steps, "log_every": 25},
        "checkpoint": {"every": args.steps, "keep": 1},
    })


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=192, help="training users")
    p.add_argument("--eval-users", type=int, default=96, help="held-out users")
    p.add_argument("--mean-length", type=float, default=2000, help="mean history length (events)")
    p.add_argument("--examples-per-user", type=int, default=24)
    p.add_argument("--short-events", type=int, default=50, help="the baseline's history: last N events per timeline")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--num-out", type=int, default=58, help="N_out of the compressing towers")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--sparse-lr", type=float, default=0.05)
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (the data seed is fixed)")
    p.add_argument("--towers", default=",".join(TOWERS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write <out>.md and <out>.json")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    towers = [t for t in args.towers.split(",") if t]
    synth = SynthConfig(mean_length=args.mean_length, num_items=20_000, num_authors=2_000, num_topics=200,
                        users_per_shard=32, examples_per_user=args.examples_per_user)
    t_start = time.perf_counter()
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="dv365-exp-") as tmp:
        root = Path(tmp)
        generate(args.users, seed=100, config=synth).write(root / "train")
        generate(args.eval_users, seed=200, config=synth, catalogue_seed=100).write(root / "eval")  # same items
        eval_ds = open_dataset(root / "eval")
        events = sum(open_dataset(root / "train").counts[k] for k in ("explicit", "implicit"))
        runs = [("baseline", "LCE", args.short_events)] + [(t, t, None) for t in towers]
        for seed in seeds:
            base_metrics = None
            for label, tower, max_events in runs:
                t0 = time.perf_counter()
                cfg = _config(args, root / f"{label}-{seed}", root / "train", tower, seed, max_events)
                result = train(cfg, progress=False)
                model_metrics = _evaluate(cfg, root, seed, label, eval_ds)
                secs = time.perf_counter() - t0
                final_loss = result["history"][-1]["loss"]
                if label == "baseline":
                    base_metrics = model_metrics
                delta = relative_deltas(model_metrics, base_metrics)
                rows.setdefault(label, []).append({"seed": seed, "metrics": model_metrics, "delta_pct": delta,
                                                   "train_loss": final_loss, "seconds": secs})
                mean_ne = statistics.fmean(delta[t] for t in TASKS)
                print(f"seed {seed} {label:>9}: mean NE delta {mean_ne:+.2f} %, watch MSE {delta['watch_time']:+.2f} %, "
                      f"train loss {final_loss:.4f}, {secs:.0f} s", flush=True)
        info = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "date": datetime.date.today().isoformat(), "commit": _commit(), "machine": platform.machine(),
            "cpus": torch.get_num_threads(), "torch": torch.__version__, "device": args.device,
            "train_users": args.users, "eval_users": args.eval_users, "train_events": events,
            "eval_examples": eval_ds.counts["examples"], "mean_length": args.mean_length, "seeds": seeds,
            "data_seeds": {"train": 100, "eval": 200, "eval_catalogue": 100}, "steps": args.steps, "batch_size": args.batch_size,
            "dim": args.dim, "num_out": args.num_out, "short_events": args.short_events,
            "minutes": (time.perf_counter() - t_start) / 60,
        }
    report = _markdown(info, rows)
    print(report)
    if args.out:
        Path(args.out + ".md").write_text(report)
        Path(args.out + ".json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    return 0


def _evaluate(cfg: TrainConfig, root: Path, seed: int, label: str, eval_ds) -> dict:
    from dv365.train import load_model

    model, _, _ = load_model(cfg.run_dir, cfg.device)
    return evaluate_model(model, eval_ds, cfg.data, torch.device(cfg.device))


def _markdown(info: dict, rows: dict[str, list[dict]]) -> str:
    def mean(values):
        values = list(values)
        return statistics.fmean(values) if values else float("nan")

    def spread(values):
        values = list(values)
        return f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""

    lines = [
        "# Table 2 on synthetic data: user towers against a short-history baseline",
        "",
        f"`{info['command']}` — {info['date']}, commit {info['commit']}, {info['machine']} CPU "
        f"({info['cpus']} threads), torch {info['torch']}, {info['minutes']:.1f} min in all.",
        "",
        f"Data: {info['train_users']} training users ({info['train_events']:,} events, mean history "
        f"{info['mean_length']:,.0f}), {info['eval_users']} held-out users ({info['eval_examples']:,} examples); "
        f"data seeds {info['data_seeds']}, training seeds {info['seeds']}. Every model: {info['steps']} steps of "
        f"{info['batch_size']} examples, D = {info['dim']}, N_out = {info['num_out']} (pass_thru keeps all slices). "
        f"Baseline: LCE on each timeline's last {info['short_events']} events only.",
        "",
        "Relative NE delta (%) per task against the baseline on the same held-out examples (negative = better); "
        "watch time: relative MSE delta (%)." + (" Mean ± standard deviation over the seeds." if len(info["seeds"]) > 1 else ""),
        "",
        "| model | " + " | ".join(TASKS) + " | mean NE Δ | watch-time MSE Δ | train loss |",
        "| --- | " + " | ".join("---:" for _ in TASKS) + " | ---: | ---: | ---: |",
    ]
    for label, runs in rows.items():
        cells = [f"{mean(r['delta_pct'][t] for r in runs):+.2f}" for t in TASKS]
        mean_ne = [statistics.fmean(r["delta_pct"][t] for t in TASKS) for r in runs]
        watch = [r["delta_pct"]["watch_time"] for r in runs]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | **{mean(mean_ne):+.2f}**{spread(mean_ne)} | "
                     f"{mean(watch):+.2f}{spread(watch)} | {mean(r['train_loss'] for r in runs):.4f} |")
    base = rows["baseline"][0]["metrics"]
    lines += ["", "Baseline NE / positive rate per task: " + ", ".join(
        f"{t} {base[t]['ne']:.3f} / {base[t]['pos_rate']:.3f}" for t in TASKS) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
