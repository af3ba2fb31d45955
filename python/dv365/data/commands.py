"""``dv365 synth`` and ``dv365 ingest`` (docs/data.md)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from .schema import DataError


def _config_flags(p: argparse.ArgumentParser) -> None:
    from .synth import SynthConfig

    for f in dataclasses.fields(SynthConfig):
        if f.type in ("int", "float") or isinstance(f.default, (int, float)):
            p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None, metavar="X",
                           help=f"(default {f.default})")


def _synth(args: argparse.Namespace) -> int:
    from .synth import SynthConfig, generate

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(SynthConfig)
                 if getattr(args, f.name, None) is not None}
    try:
        cfg = SynthConfig(**overrides)
    except ValueError as e:
        print(f"dv365 synth: {e}", file=sys.stderr)
        return 2
    gen = generate(args.users, seed=args.seed, config=cfg)
    start = time.perf_counter()
    done = {"users": 0, "events": 0}

    def progress(shard) -> None:
        done["users"] = shard.end_user
        done["events"] += shard.explicit["ts"].size + shard.implicit["ts"].size
        dt = time.perf_counter() - start
        width = 30
        fill = int(width * done["users"] / args.users)
        print(f"\r[{'#' * fill}{'.' * (width - fill)}] {done['users']}/{args.users} users, "
              f"{done['events'] / max(dt, 1e-9) / 1e6:.2f} M events/s", end="", file=sys.stderr, flush=True)

    try:
        manifest = gen.write(args.out, overwrite=args.overwrite, progress=None if args.quiet else progress)
    except DataError as e:
        print(f"\ndv365 synth: {e}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - start
    c = manifest["counts"]
    if not args.quiet:
        print(file=sys.stderr)
    print(f"wrote {args.out}: {manifest['num_users']} users, {c['explicit']} explicit + {c['implicit']} implicit "
          f"events, {c['examples']} examples, {len(manifest['shards'])} shards in {dt:.1f} s")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from .ingest import ingest, parse_mapping

    try:
        report = ingest(
            args.input, args.out, parse_mapping(args.map), format=args.format, like_threshold=args.like_threshold,
            time_unit=args.time_unit, time_format=args.time_format, media_type=args.media_type,
            surface=args.surface, examples_per_user=args.examples_per_user, users_per_shard=args.users_per_shard,
            overwrite=args.overwrite,
        )
    except DataError as e:
        print(f"dv365 ingest: {e}", file=sys.stderr)
        return 2
    print(report)
    print(f"wrote {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("synth", help="generate a synthetic UniTi dataset (Parquet)",
                       description="Synthetic users with long-term and emerging interests (dv365.data.synth).")
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _config_flags(p)
    p.set_defaults(func=_synth)

    p = sub.add_parser("ingest", help="convert a CSV / Parquet interaction log to a UniTi dataset",
                       description="e.g. --map user=userId,item=movieId,timestamp=timestamp,rating=rating --like-threshold 4")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=("csv", "parquet"), default=None, help="default: from the file suffix")
    p.add_argument("--map", required=True, help="key=column,... keys: user item timestamp [author topic action "
                   "rating duration dwell media_type surface]")
    p.add_argument("--like-threshold", type=float, default=None)
    p.add_argument("--time-unit", choices=("s", "ms", "us", "ns"), default="s")
    p.add_argument("--time-format", default="%Y-%m-%dT%H:%M:%S", help="for string timestamps")
    p.add_argument("--media-type", default="video", help="when not mapped")
    p.add_argument("--surface", default="feed", help="when not mapped")
    p.add_argument("--examples-per-user", type=int, default=1)
    p.add_argument("--users-per-shard", type=int, default=1024)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_ingest)
