"""A decoded columnar cache of a dataset's shards, so that the loaders never decode Parquet on the hot path.

Each shard decodes once into plain ``.npy`` files that the loaders memory-map (no pyarrow at read time, no copy
until a batch is gathered)::

    CACHE/shard-00000/meta.json           written last: the cache version, the source files' SHA-256, sizes
    CACHE/shard-00000/explicit.offsets.npy int64 [U + 1]: user first_user + u's events are rows offsets[u:u+2]
    CACHE/shard-00000/explicit.ts.npy     uint32 [N]: ts - ts_base (int64 ts if the shard spans > 136 years)
    CACHE/shard-00000/explicit.ts_base.npy int64 [1]
    CACHE/shard-00000/explicit.ids.npy    int32 [3, N] (media_id, author_id, topic_id; int64 if an id >= 2^31)
    CACHE/shard-00000/explicit.cats.npy   int8  [C, N]
    CACHE/shard-00000/explicit.floats.npy float32 [F, N] (NaN = unknown, filled by the loader on request)
    CACHE/shard-00000/implicit.*.npy, examples.<column>.npy

Narrow types on disk, widened while the loader copies them into a batch (as fast as a plain copy): 19 bytes per
explicit and 26 per implicit event instead of the batch's 35 and 42, so more of the data fits the page cache and
a disk-bound read delivers more events per second.

A shard's entry is valid while its ``meta.json`` names the same SHA-256 for each of the shard's files as the
dataset's manifest and every file has its recorded size; otherwise (new data written over the dataset, a
truncated file) it is rebuilt from Parquet, whose checksum is verified on that read (a corrupted source file
is a :class:`DataError`). Entries are built in a private directory and renamed into place, so a killed build
leaves nothing half-written and concurrent builders never see each other's partial files; a lock file per shard
lets one process (data-parallel rank) build an entry while the others wait for it.

Location (:func:`cache_dir`): ``DV365_DATA_CACHE=0`` (or ``off``) disables the cache; ``DV365_DATA_CACHE=DIR``
puts it under ``DIR``; otherwise ``<dataset>/.dv365-cache`` when the dataset directory is writable, else
``$XDG_CACHE_HOME/dv365`` (``~/.cache/dv365``), one subdirectory per dataset path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: concurrent builders each build, and one rename wins
    fcntl = None

from ..timeline import CAT_FIELDS, EXPLICIT, FLOAT_FIELDS, ID_FIELDS, IMPLICIT
from .parquet import Dataset
from .schema import EXAMPLES, SHARDED_TABLES, DataError

CACHE_VERSION = 2
ENV = "DV365_DATA_CACHE"
KINDS = (EXPLICIT, IMPLICIT)
ShardArrays = dict[str, np.ndarray]


def _block(cols: dict[str, np.ndarray], names: tuple[str, ...], dtype: type, n: int) -> np.ndarray:
    if not names:
        return np.empty((0, n), dtype=dtype)
    return np.stack([cols[name] for name in names]).astype(dtype, copy=False)


def decode_shard(dataset: Dataset, k: int) -> ShardArrays:
    """Shard ``k`` of ``dataset`` read from Parquet (checksums and schema checked) into the cache's arrays."""
    first, end = dataset.shard_users(k)
    out: ShardArrays = {}
    for kind in KINDS:
        cols = dataset.read_table(k, kind)
        ts = cols["ts"]
        n = ts.size
        out[f"{kind}.offsets"] = np.searchsorted(cols["user_id"], np.arange(first, end + 1, dtype=np.int64)).astype(np.int64)
        base = int(ts.min()) if n else 0
        if n and int(ts.max()) - base >= 1 << 32:
            out[f"{kind}.ts_base"], out[f"{kind}.ts"] = np.zeros(1, dtype=np.int64), ts
        else:
            out[f"{kind}.ts_base"], out[f"{kind}.ts"] = np.array([base], dtype=np.int64), (ts - base).astype(np.uint32)
        wide = any(cols[f].size and int(cols[f].max()) >= 1 << 31 for f in ID_FIELDS)
        out[f"{kind}.ids"] = _block(cols, ID_FIELDS, np.int64 if wide else np.int32, n)
        out[f"{kind}.cats"] = _block(cols, CAT_FIELDS[kind], np.int8, n)
        out[f"{kind}.floats"] = _block(cols, FLOAT_FIELDS[kind], np.float32, n)
    for name, col in dataset.read_table(k, EXAMPLES).items():
        out[f"{EXAMPLES}.{name}"] = col
    return out


def cache_dir(dataset: Dataset, cache: bool | str | os.PathLike | None = None) -> Path | None:
    """Where ``dataset``'s cache lives (module docstring), or None when it is disabled. ``cache``: None = the
    default (``DV365_DATA_CACHE``, then beside the dataset, then the user cache), False = no cache, True = the
    default even if the environment disables it, a path = that directory."""
    if cache is False:
        return None
    if cache is not None and cache is not True:
        return Path(cache)
    env = os.environ.get(ENV, "")
    if cache is None and env.lower() in ("0", "off", "false", "no"):
        return None
    tag = hashlib.sha256(str(dataset.path.resolve()).encode()).hexdigest()[:16]
    if env and env.lower() not in ("0", "off", "false", "no", "1", "on", "true", "yes"):
        return Path(env) / tag
    if os.access(dataset.path, os.W_OK):
        return dataset.path / ".dv365-cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dv365" / tag


_NPY_HEADER = re.compile(r"\{'descr': '([<>|=][a-zA-Z]\d*)', 'fortran_order': False, 'shape': \(([\d, ]*)\), \}")


def _open_npy(path: Path, size: int) -> np.ndarray:
    """``np.load(path, mmap_mode="r")`` (files over 4 KiB; smaller ones are read) without its costs: numpy parses
    the header with ``ast`` and builds an ``np.memmap``, which for a shard's 29 arrays cost about a third of the time
    its rows take to copy, paid by every loader worker that opens the shard (docs/data.md). The files are ours
    (``np.save`` of C-ordered plain dtypes); anything else falls back to ``np.load``."""
    with open(path, "rb") as f:
        head = f.read(256 if size > 4096 else size)
        m = _NPY_HEADER.search(head[:256].decode("latin1"))
        if head[:6] != b"\x93NUMPY" or head[6] not in (1, 2, 3) or m is None:
            return np.load(path, mmap_mode="r") if size > 4096 else np.load(path)
        hlen = int.from_bytes(head[8:10], "little") if head[6] == 1 else int.from_bytes(head[8:12], "little")
        offset = (10 if head[6] == 1 else 12) + hlen
        dtype = np.dtype(m.group(1))
        shape = tuple(int(x) for x in m.group(2).replace(" ", "").split(",") if x)
        count = int(np.prod(shape))
        if size <= 4096:
            return np.frombuffer(head, dtype=dtype, count=count, offset=offset).reshape(shape).copy()
        if count == 0:
            empty = np.empty(shape, dtype=dtype)
            empty.flags.writeable = False
            return empty
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(mm, dtype=dtype, count=count, offset=offset).reshape(shape)


class ShardCache:
    """The cache of one dataset at ``root``: :meth:`get` returns a shard's memory-mapped arrays, building the
    entry first when it is missing or stale. Thread-safe; safe across processes sharing ``root``."""

    def __init__(self, dataset: Dataset, root: str | os.PathLike):
        self.dataset, self.root = dataset, Path(root)
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()

    def path(self, k: int) -> Path:
        return self.root / f"shard-{k:05d}"

    def _sources(self, k: int) -> dict[str, str]:
        files = self.dataset.manifest["shards"][k]["files"]
        return {name: files[name]["sha256"] for name in SHARDED_TABLES}

    def load(self, k: int) -> ShardArrays | None:
        """Shard ``k``'s arrays if its entry is valid for the dataset as it is now, else None."""
        d = self.path(k)
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        if meta.get("version") != CACHE_VERSION or meta.get("sources") != self._sources(k):
            return None
        out = {}
        try:
            for name, size in meta["bytes"].items():
                p = d / f"{name}.npy"
                if p.stat().st_size != size:
                    return None
                out[name] = _open_npy(p, size)
        except (OSError, ValueError):  # replaced under us by another builder, or damaged: rebuild
            return None
        return out

    def build(self, k: int) -> ShardArrays:
        """Decode shard ``k`` from Parquet and write its entry atomically; returns the decoded arrays."""
        arrays = decode_shard(self.dataset, k)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".shard-{k:05d}.", dir=self.root))
        try:
            sizes = {}
            for name, a in arrays.items():
                p = tmp / f"{name}.npy"
                np.save(p, np.ascontiguousarray(a))
                sizes[name] = p.stat().st_size
            meta = {"version": CACHE_VERSION, "shard": k, "sources": self._sources(k), "bytes": sizes}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            final = self.path(k)
            old = None
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".stale-{k:05d}.", dir=self.root))
                try:
                    final.rename(old / "entry")
                except OSError:
                    pass  # another builder moved it first
            try:
                tmp.rename(final)
            except OSError:
                pass  # another builder's entry landed first: it is as good as ours
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return arrays

    def get(self, k: int) -> ShardArrays:
        with self._guard:
            lock = self._locks.setdefault(k, threading.Lock())
        with lock:
            arrays = self.load(k)
            if arrays is not None:
                return arrays
            try:
                with self._file_lock(k):  # other processes (ranks) wait for one build instead of repeating it
                    arrays = self.load(k)
                    return arrays if arrays is not None else self.build(k)
            except OSError as e:
                raise DataError(f"data cache: cannot build {self.path(k)} ({e}); set {ENV}=DIR to put the "
                                f"cache elsewhere or {ENV}=0 to read Parquet directly") from None

    @contextlib.contextmanager
    def _file_lock(self, k: int):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".shard-{k:05d}.lock", "a") as f:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(f, fcntl.LOCK_UN)

    def status(self) -> dict[str, Any]:
        """``{"root", "valid": [shards], "stale_or_missing": [shards], "bytes"}`` without building anything."""
        valid, other, size = [], [], 0
        for k in range(self.dataset.num_shards):
            meta = self.load(k)
            if meta is None:
                other.append(k)
            else:
                valid.append(k)
                size += sum(p.stat().st_size for p in self.path(k).iterdir())
        return {"root": str(self.root), "valid": valid, "stale_or_missing": other, "bytes": size}


def build_cache(dataset: Dataset, cache: bool | str | os.PathLike | None = None, shards: list[int] | None = None,
                workers: int = 1, progress: bool = False) -> ShardCache:
    """Build (or validate) the cache of every shard (or ``shards``) now, ``workers`` shards at a time, instead of
    on first use by a loader. Returns the :class:`ShardCache`."""
    root = cache_dir(dataset, True if cache is None else cache)
    if root is None:
        raise ValueError("build_cache: the cache is disabled (cache=False)")
    sc = ShardCache(dataset, root)
    todo = list(range(dataset.num_shards)) if shards is None else list(shards)

    def one(k: int) -> None:
        if sc.load(k) is None:
            sc.get(k)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="data cache", unit="shard", dynamic_ncols=True)
    if workers <= 1:
        for k in todo:
            one(k)
            if bar is not None:
                bar.update()
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(one, todo):
                if bar is not None:
                    bar.update()
    if bar is not None:
        bar.close()
    return sc
