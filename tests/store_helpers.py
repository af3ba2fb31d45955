"""Helpers for tests/test_store.py: a throwaway redis-server, deterministic records, and the worker processes the
crash and concurrency tests run (``python tests/store_helpers.py publish|read|gc ...``; numpy only, no torch, so
they start fast)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np

SHAPE = (58, 136)  # one user: 58 int4 rows of D = 256


def records_for(ids: np.ndarray, tag: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Bytes that depend on (user, tag) only, so any process can tell which version a record came from."""
    nb = int(np.prod(shape))
    ids = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    x = ids[:, None] * np.uint64(0x9E3779B97F4A7C15) + np.array([tag], dtype=np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    x = x + np.arange(nb, dtype=np.uint64)[None, :] * np.uint64(0x165667B19E3779F9)
    x ^= x >> np.uint64(29)
    return (x & np.uint64(0xFF)).astype(np.uint8).reshape(len(ids), *shape)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` on a free port in a temp dir, no persistence; ``stop()`` ends it (by its pid)."""

    def __init__(self, workdir: str):
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", workdir, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def url(self, prefix: str) -> str:
        return f"redis://127.0.0.1:{self.port}/0?prefix={prefix}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def write_version(store, name: str, ids: np.ndarray, tag: int, parts: int, manifest: dict | None = None):
    w = store.stage(name)
    infos = [w.write_part(p, chunk, records_for(chunk, tag)) for p, chunk in enumerate(np.array_split(ids, parts))]
    return store.publish(name, manifest if manifest is not None else {"tag": tag}, infos)


def _main() -> int:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
    from dv365.store import open_store

    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=("publish", "read", "gc"))
    ap.add_argument("url")
    ap.add_argument("--version", default="v2")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--tag", type=int, default=2)
    ap.add_argument("--old", default="v1")
    ap.add_argument("--keep", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    store = open_store(args.url)
    ids = np.arange(args.users, dtype=np.int64) * 3 + 1
    if args.cmd == "publish":
        write_version(store, args.version, ids, args.tag, args.parts)
    elif args.cmd == "gc":
        print(json.dumps(store.gc(args.keep, staged_older_than=0)))
    else:
        # Reads the same batch of users until the new version has been seen in 20 requests; classifies every
        # request as all-old, all-new or mixed (a version switch seen mid-request would be mixed).
        rng = np.random.default_rng(0)
        tags = {args.old: 1, args.version: args.tag}
        counts = {"old": 0, "new": 0, "mixed": 0, "bad_version": 0}
        deadline = time.monotonic() + args.timeout
        ready = False
        while time.monotonic() < deadline and counts["new"] < 20:
            batch = rng.choice(ids, size=200, replace=False)
            name, recs, found, _ = store._get_arrays(batch, None)
            if name not in tags:
                counts["bad_version"] += 1
                continue
            old = (recs == records_for(batch, 1)).all(axis=(1, 2)) & found
            new = (recs == records_for(batch, args.tag)).all(axis=(1, 2)) & found
            key = "old" if old.all() else "new" if new.all() else "mixed"
            if (key == "new") != (name == args.version):
                key = "mixed"  # the records disagree with the version the result names
            counts[key] += 1
            if not ready:
                print("ready", flush=True)
                ready = True
        print(json.dumps(counts), flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
