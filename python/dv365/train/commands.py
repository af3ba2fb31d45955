"""``dv365 train`` and ``dv365 eval``."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a DV365 model (pooling + user tower + backbone) from a YAML config",
        description="Train a DV365 model. CONFIG is a YAML file (every key optional; --print-config shows them all\n"
        "with their defaults); KEY=VALUE arguments override it (e.g. schedule.steps=500 model.tower.name=LCE).\n"
        "A run folder with checkpoints resumes from the newest one. Multi-process: torchrun --nproc-per-node N\n"
        "-m dv365.cli train CONFIG. See docs/training.md.",
    )
    p.add_argument("config", nargs="?", default=None, help="YAML config file (omit for all defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, values in YAML syntax")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="warm-start from this checkpoint (file or run folder) when the run has none of its own")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue a run folder that has checkpoints")
    p.add_argument("--print-config", action="store_true", help="print the full config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    e = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: NE, AUC per task, watch-time MSE (and NE delta against a baseline)",
    )
    e.add_argument("checkpoint", help="checkpoint file or run folder (its newest checkpoint)")
    e.add_argument("--data", required=True, help="dataset folder to evaluate on")
    e.add_argument("--baseline", default=None, metavar="CHECKPOINT", help="also evaluate this model; report NE deltas")
    e.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    e.add_argument("--batch-size", type=int, default=None, help="examples per batch (default: the training config's)")
    e.add_argument("--out", default=None, help="write the metrics as JSON to this file")
    e.set_defaults(func=_eval)


def _split_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    # `dv365 train schedule.steps=5` (no file) parses the override as the config argument
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)
        config = None
    return config, overrides


def _train(args: argparse.Namespace) -> int:
    import yaml

    from .config import load_config
    from .trainer import train

    config, overrides = _split_overrides(args)
    cfg = load_config(config, overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    result = train(cfg, init_from=args.init_from, resume=not args.no_resume, progress=not args.quiet)
    history = result["history"]
    if history:
        last = history[-1]
        print(f"step {last['step']}: loss {last['loss']:.4f}, {last['examples_per_s']:,.0f} examples/s")
    if "eval" in result:
        _print_metrics(result["eval"])
    print(f"run folder: {result['run_dir']} (checkpoints/, metrics.json, loss_curve.png)")
    return 0


def _print_metrics(metrics: dict, baseline: dict | None = None, delta: dict | None = None) -> None:
    from .evaluate import format_table

    print(format_table(metrics, baseline, delta))


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.data, baseline=args.baseline, device=args.device,
                                 batch_size=args.batch_size, progress=sys.stderr.isatty())
    _print_metrics(result["model"]["metrics"], result.get("baseline", {}).get("metrics"), result.get("delta_pct"))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return 0
