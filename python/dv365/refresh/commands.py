"""``dv365 refresh`` (docs/export.md)."""

from __future__ import annotations

import argparse
import errno
import json
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "refresh",
        help="one cycle of the recurring job: warm-started training on new data, export, publish, stability report",
        description="Run (or finish) one refresh cycle on --data: train from the previous cycle's model (cold the\n"
        "first time), export every user, publish the version, and report the per-user cosine similarity to\n"
        "the previous version (JSON + PNG) and the NE on the config's data.eval_path. Each stage is recorded\n"
        "when done: a rerun after a failure resumes, a rerun of a finished cycle does nothing.\n"
        "See docs/export.md.",
    )
    p.add_argument("config", nargs="?", default=None, help="training config YAML (as dv365 train)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, values in YAML syntax")
    p.add_argument("--data", required=True, help="the new dataset folder")
    p.add_argument("--store", required=True, help="store: a directory (LMDB) or redis://host:port/db?prefix=NAME")
    p.add_argument("--state", default=None, metavar="DIR",
                   help="state folder: refresh.json and one folder per cycle (default: the config's run_dir)")
    p.add_argument("--keep", type=int, default=3, help="published versions kept in the store")
    p.add_argument("--device", default=None, help="device for export and evaluation (default: the config's)")
    p.add_argument("--batch-size", type=int, default=256, help="users per export batch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_refresh)


def _refresh(args: argparse.Namespace) -> int:
    from ..configs import ConfigError
    from ..data import DataError
    from ..export import ExportError
    from ..store import StoreError
    from ..train.checkpoint import CheckpointError
    from ..train.commands import _split_overrides
    from .cycle import RefreshError, refresh

    config, overrides = _split_overrides(args)
    try:
        cycle = refresh(config, args.data, args.store, state_dir=args.state, overrides=overrides, keep=args.keep,
                        device=args.device, batch_size=args.batch_size, progress=not args.quiet)
    except (RefreshError, ExportError, CheckpointError, DataError, StoreError, ConfigError) as e:
        msg = str(e)
        print(msg if msg.startswith("dv365") else f"dv365 refresh: {msg}", file=sys.stderr)
        return 2
    except OSError as e:
        what = "the disk is full" if e.errno == errno.ENOSPC else "an I/O error"
        print(f"dv365 refresh: {what} ({e}); the store's current version is unchanged; rerun to resume", file=sys.stderr)
        return 1
    report = cycle["stages"]["report"]
    if cycle["noop"]:
        print(f"cycle {cycle['cycle']} on {cycle['data']} is already done (version {cycle['version']})")
    else:
        print(f"cycle {cycle['cycle']}: published version {cycle['version']}")
    print(f"report: {report['json']}" + (f" (histogram {report['png']}, mean cosine {report['mean_cosine']:.4f})"
                                         if report.get("png") else ""))
    if args.quiet:
        print(json.dumps({"cycle": cycle["cycle"], "version": cycle["version"], "noop": cycle["noop"]}))
    return 0
