"""``dv365 synth`` and ``dv365 ingest`` (docs/data.md). Imports happen when a command runs (``dv365 --help``
stays fast); errors are raised for ``dv365.cli.main`` to print."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from ..cli import lazy_arguments


def _config_flags(p: argparse.ArgumentParser) -> None:
    from .synth import SynthConfig

    g = p.add_argument_group("generator (SynthConfig fields; see the dv365.data.synth docstring)")
    for f in dataclasses.fields(SynthConfig):
        if f.type in ("int", "float") or isinstance(f.default, (int, float)):
            g.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None, metavar="X",
                           help=f"SynthConfig.{f.name} (default: {f.default})")


def _synth(args: argparse.Namespace) -> int:
    from .schema import DataError
    from .synth import SynthConfig, generate

    if args.users < 1:
        raise DataError(f"--users must be >= 1, got {args.users}")
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(SynthConfig)
                 if getattr(args, f.name, None) is not None}
    cfg = SynthConfig(**overrides)
    gen = generate(args.users, seed=args.seed, config=cfg, catalogue_seed=args.catalogue_seed)
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
    finally:
        if not args.quiet:
            print(file=sys.stderr)
    dt = time.perf_counter() - start
    c = manifest["counts"]
    print(f"wrote {args.out}: {manifest['num_users']} users, {c['explicit']} explicit + {c['implicit']} implicit "
          f"events, {c['examples']} examples, {len(manifest['shards'])} shards in {dt:.1f} s")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    import warnings

    from .ingestion import IngestWarning, ingest, parse_mapping

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IngestWarning)  # printed below from the report, once
        report = ingest(
            args.input, args.out, parse_mapping(args.map), format=args.format, delimiter=args.delimiter,
            like_threshold=args.like_threshold, time_unit=args.time_unit, time_format=args.time_format,
            media_type=args.media_type, surface=args.surface, examples_per_user=args.examples_per_user,
            label_window=args.label_window, users_per_shard=args.users_per_shard,
            max_bad_fraction=args.max_bad_fraction, overwrite=args.overwrite, progress=not args.quiet,
            vocab_from=args.vocab_from,
        )
    print(report)
    for w in report.warnings:
        print(f"dv365 ingest: {w}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("synth", help="generate a synthetic UniTi dataset (Parquet)",
                       description="Synthetic users with long-term and emerging interests (dv365.data.synth).")
    p.add_argument("--users", type=int, required=True, help="number of users (>= 1)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed and flags: same bytes)")
    p.add_argument("--catalogue-seed", type=int, default=None,
                   help="seed of the item catalogue (default: --seed); give held-out users the training data's "
                        "catalogue seed so that their item ids mean the same items")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    lazy_arguments(p, _config_flags)
    p.set_defaults(func=_synth)

    p = sub.add_parser("ingest", help="convert a CSV / Parquet interaction log to a UniTi dataset",
                       description="Convert an interaction log (CSV or Parquet) to a UniTi dataset; see docs/data.md.\n"
                       "e.g. --map user=userId,item=movieId,timestamp=timestamp,rating=rating --like-threshold 4")
    p.add_argument("--input", required=True, help="the log: a CSV file or a Parquet file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=("csv", "parquet"), default=None,
                   help="input format (default: parquet for .parquet / .pq, else csv)")
    p.add_argument("--delimiter", default=",", help="CSV field separator: ',' ';' '|' or 'tab'")
    p.add_argument("--map", required=True, help="key=column,... keys: user item timestamp [author topic action "
                   "rating duration dwell media_type surface]")
    p.add_argument("--like-threshold", type=float, default=None,
                   help="with 'rating' mapped (required then): rating >= this is an explicit like")
    p.add_argument("--time-unit", choices=("s", "ms", "us", "ns"), default="s", help="unit of numeric timestamps")
    p.add_argument("--time-format", default="%Y-%m-%dT%H:%M:%S", help="strptime format of string timestamps")
    p.add_argument("--media-type", default="video", help="media type of every event when not mapped")
    p.add_argument("--surface", default="feed", help="surface of every event when not mapped")
    p.add_argument("--examples-per-user", type=int, default=1,
                   help="the last N events of each user become training examples")
    p.add_argument("--label-window", type=int, default=86400,
                   help="seconds after a request in which an explicit action on its item sets the label")
    p.add_argument("--users-per-shard", type=int, default=1024, help="users per Parquet shard")
    p.add_argument("--max-bad-fraction", type=float, default=0.1,
                   help="fail (and write nothing) when more than this share of the rows is bad")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    p.add_argument("--vocab-from", default=None, metavar="DATASET",
                   help="an earlier ingested dataset whose user, item, author and topic ids this one keeps (new ones "
                        "get the next ids), so that its model and embeddings carry over to this snapshot")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_ingest)
