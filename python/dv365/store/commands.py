"""``dv365 store ls|show|gc|verify`` and ``dv365 lookup`` (docs/store.md)."""

from __future__ import annotations

import argparse
import json
import math
import sys


def _open(args: argparse.Namespace, readonly: bool = True):
    from . import open_store

    return open_store(args.store, readonly=readonly)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _ls(args: argparse.Namespace) -> int:
    with _open(args) as store:
        rows = store.versions()
    if not rows:
        print(f"{args.store}: no versions")
        return 0
    table = [("", "version", "state", "users", "parts", "size", "created", "published")]
    for v in rows:
        table.append(("*" if v.current else "", v.name, v.state, str(v.users), str(v.parts), _size(v.bytes),
                      v.created[:19], (v.published or "-")[:19]))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        cells = (c.rjust(w) if i in (3, 4, 5) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        print("  ".join(cells).rstrip())
    return 0


def _strict_json(obj):
    """Non-finite floats as the strings "NaN", "Infinity", "-Infinity": Python writes them as bare NaN / Infinity,
    which JSON does not have, so jq 1.6 reads null and JavaScript's JSON.parse fails (a real log's manifest has
    ``fill_missing: NaN``)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if obj != obj else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    return obj


def _show(args: argparse.Namespace) -> int:
    with _open(args) as store:
        print(json.dumps(_strict_json(store.manifest(args.version)), indent=2, sort_keys=True, allow_nan=False))
    return 0


def _gc(args: argparse.Namespace) -> int:
    with _open(args, readonly=False) as store:
        removed = store.gc(args.keep, staged_older_than=args.staged_older_than)
    print(f"removed {len(removed)} version(s)" + (": " + ", ".join(removed) if removed else ""))
    return 0


def _verify(args: argparse.Namespace) -> int:
    with _open(args) as store:
        report = store.verify(args.version)
    print(report)
    return 0 if report.ok else 1


def _user_ids(args: argparse.Namespace) -> tuple[list[str], list[int], list[bool]]:
    """(label, dense id, known) per USER: dense ids as given, or with ``--data`` the raw ids of an ingested dataset
    mapped through its ``vocab/users.parquet`` (an unknown raw id is looked up as -1: never found)."""
    if args.data is None:
        for u in args.users:
            try:
                int(u)
            except ValueError:
                raise ValueError(f"USER {u!r} is not a dense user id (an integer); for your own ids of an ingested "
                                 "log pass --data DATASET, whose vocab/users.parquet maps them") from None
        return list(args.users), [int(u) for u in args.users], [True] * len(args.users)
    from pathlib import Path

    import pyarrow.parquet as pq

    path = Path(args.data) / "vocab" / "users.parquet"
    if not path.is_file():
        raise ValueError(f"--data {args.data}: no vocab/users.parquet (dv365 ingest writes it; the users of a "
                         "synthetic dataset are their dense ids: leave out --data)")
    table = pq.read_table(path, columns=["id", "raw"])
    dense = dict(zip(table.column("raw").to_pylist(), table.column("id").to_pylist()))
    ids = [dense.get(u, -1) for u in args.users]
    return [f"{u} (id {i})" if i >= 0 else u for u, i in zip(args.users, ids)], ids, [i >= 0 for i in ids]


def _lookup(args: argparse.Namespace) -> int:
    import torch

    count = args.values if args.values is not None else (16 if args.raw else 6)
    labels, ids, known = _user_ids(args)
    with _open(args) as store:
        res = store.lookup(ids, version=args.version, dequantize=not args.raw)
    for i, uid in enumerate(labels):
        if not known[i]:
            print(f"user {uid}: not in {args.data} (no such raw id in its vocab/users.parquet)")
        elif bool(res.corrupt[i]):
            print(f"user {uid}: CORRUPT record in version {res.version} (checksum mismatch), not served")
        elif not bool(res.found[i]):
            print(f"user {uid}: not found (version {res.version})")
        elif args.raw:
            rec = res.records[i]
            raw = rec.reshape(-1).view(torch.uint8)[:count].tolist()
            dtype = str(rec.dtype).split(".")[-1]
            print(f"user {uid}: found, version {res.version}, record {list(rec.shape)} {dtype}, "
                  f"first bytes {bytes(raw).hex(' ')}")
        else:
            emb = res.embeddings[i]
            vals = ", ".join(f"{v:.4f}" for v in emb[0, :count].tolist())
            print(f"user {uid}: found, version {res.version}, embedding {list(emb.shape)} float32, "
                  f"row 0 [{vals}{', ...' if emb.shape[1] > count else ''}]")
    return 0


def _guard(name: str, fn):
    def run(args: argparse.Namespace) -> int:
        from .base import StoreError

        try:
            return fn(args)
        except StoreError as e:
            print(f"dv365 {name}: error: {e}", file=sys.stderr)
            return 2

    return run


def register(sub) -> None:
    p = sub.add_parser("store", help="inspect and maintain an embedding store (LMDB dir or redis:// URL)",
                       description="STORE is a directory (LMDB), lmdb:///abs/path or redis://host:port/db?prefix=P.")
    ss = p.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    q = ss.add_parser("ls", help="versions: current marker, state, users, size, created, published")
    q.add_argument("store")
    q.set_defaults(func=_guard("store ls", _ls))
    q = ss.add_parser("show", help="a published version's manifest (default: current)")
    q.add_argument("store")
    q.add_argument("version", nargs="?")
    q.set_defaults(func=_guard("store show", _show))
    q = ss.add_parser("gc", help="remove old published versions and abandoned staged ones (never the current)")
    q.add_argument("store")
    q.add_argument("--keep", type=int, required=True, help="published versions to keep (the current one always)")
    q.add_argument("--staged-older-than", type=float, default=3600.0, metavar="SECONDS",
                   help="remove staged versions not written for this long (default 3600)")
    q.set_defaults(func=_guard("store gc", _gc))
    q = ss.add_parser("verify", help="re-check every record's checksum (exit 1 if anything is bad)")
    q.add_argument("store")
    q.add_argument("version", nargs="?")
    q.set_defaults(func=_guard("store verify", _verify))

    p = sub.add_parser("lookup", help="look users up in an embedding store",
                       description="Prints per user: found, version, shape, the first values of row 0.")
    p.add_argument("users", nargs="+", metavar="USER",
                   help="dense user ids; with --data, your own ids of an ingested log")
    p.add_argument("--data", default=None, metavar="DATASET",
                   help="an ingested dataset: USER are raw ids, mapped through its vocab/users.parquet")
    p.add_argument("--store", required=True, help="the store: an LMDB directory, lmdb:///abs/path or redis://host:port/db")
    p.add_argument("--version", default=None, help="a published version (default: current)")
    p.add_argument("--raw", action="store_true", help="the stored int4 record bytes instead of dequantized values")
    p.add_argument("--values", type=int, default=None, help="how many values (default 6) / bytes (default 16) to print")
    p.set_defaults(func=_guard("lookup", _lookup))
