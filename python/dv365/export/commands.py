"""``dv365 export`` (docs/export.md)."""

from __future__ import annotations

import argparse
import errno
import json
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export every user's embedding (user tower + int4) to a versioned store and publish it",
        description="Run the user tower of CHECKPOINT over every user of --data at --cutoff (histories ts < cutoff,\n"
        "request_ts = cutoff + the training gap), quantize each row to int4 and publish the result as one\n"
        "version of --store. A killed export resumes where it stopped when rerun with the same arguments.\n"
        "Workers: --part K --parts P on each, then --publish-only once (or torchrun: rank 0 publishes).\n"
        "See docs/export.md.",
    )
    p.add_argument("checkpoint", help="checkpoint file or training run folder (its newest checkpoint)")
    p.add_argument("--data", required=True, help="dataset folder (dv365 synth / ingest)")
    p.add_argument("--store", required=True, help="store: a directory (LMDB) or redis://host:port/db?prefix=NAME")
    p.add_argument("--cutoff", default="auto",
                   help="cut-off in seconds since the epoch, or auto (one second after the data's latest time)")
    p.add_argument("--version", default=None, help="version name (default: <cut-off UTC>-<digest of the arguments>)")
    p.add_argument("--batch-size", type=int, default=256, help="users per batch")
    p.add_argument("--half-scale-bias", action="store_true", help="fp16 scale/bias per row (fbgemm's format, 132 B "
                   "rows at D=256) instead of fp32 (136 B)")
    p.add_argument("--since", default=None, metavar="VERSION",
                   help="incremental: recompute only users whose embedding can have changed since this published "
                   "version (same checkpoint), copy the others")
    p.add_argument("--part", type=int, default=None, metavar="K", help="this worker's index (with --parts)")
    p.add_argument("--parts", type=int, default=None, metavar="P", help="number of workers; the worker writes its "
                   "block of the parts and does not publish")
    p.add_argument("--publish-only", action="store_true", help="verify the parts every worker wrote and publish")
    p.add_argument("--keep", type=int, default=None, metavar="K", help="after publishing, keep the newest K versions")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--autocast", default=None, choices=("auto", "bf16", "off"),
                   help="bf16 autocast of the tower (default: the training config's setting)")
    p.add_argument("--part-size", type=int, default=None, metavar="USERS",
                   help="users per part, the unit of resume and of the store's checksums (default 8192)")
    p.add_argument("--workers", type=int, default=None, help="loader workers: processes where available, else threads (default: the loader's)")
    p.add_argument("--progress-dir", default=None, help="where the resume files live (default ~/.cache/dv365/export)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from ..data import DataError
    from ..store import StoreError
    from ..train.checkpoint import CheckpointError
    from .exporter import DEFAULT_PART_SIZE, ExportError, export

    try:
        res = export(args.checkpoint, args.data, args.store, cutoff=args.cutoff, version=args.version,
                     batch_size=args.batch_size, half_scale_bias=args.half_scale_bias, since=args.since,
                     part=args.part, parts=args.parts, publish_only=args.publish_only, keep=args.keep,
                     device=args.device, autocast=args.autocast, part_size=args.part_size or DEFAULT_PART_SIZE,
                     progress_dir=args.progress_dir, progress=not args.quiet, workers=args.workers)
    except (ExportError, CheckpointError, DataError, StoreError) as e:
        msg = str(e)
        print(msg if msg.startswith("dv365") else f"dv365 export: {msg}", file=sys.stderr)
        return 2
    except OSError as e:
        what = "the disk is full" if e.errno == errno.ENOSPC else "an I/O error"
        print(f"dv365 export: {what} ({e}); nothing was published, the store's current version is unchanged; "
              "rerun the same command to continue", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"version": res.version, "published": res.published, "already_published": res.already_published,
                          "exported": res.exported, "carried": res.carried, "parts_written": res.parts_written,
                          "parts_skipped": res.parts_skipped, "seconds": res.seconds, "timings": res.timings}))
    elif res.already_published:
        print(f"version {res.version} is already published with these arguments: nothing to do")
    else:
        done = (f"published version {res.version}" if res.published
                else f"wrote parts {_ranges(res.parts_written)} of version {res.version} (publish with --publish-only)")
        skipped = f", {len(res.parts_skipped)} parts already done" if res.parts_skipped else ""
        loop = res.timings.get("loop", res.seconds)
        print(f"{done}: {res.exported:,} users exported, {res.carried:,} carried over{skipped}, "
              f"{res.seconds:.1f} s ({(res.exported + res.carried) / max(loop, 1e-9):,.0f} users/s after loading)")
    return 0


def _ranges(parts: list[int]) -> str:
    if not parts:
        return "none"
    out, start, prev = [], parts[0], parts[0]
    for k in parts[1:] + [None]:
        if k is not None and k == prev + 1:
            prev = k
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if k is not None:
            start = prev = k
    return ",".join(out)
