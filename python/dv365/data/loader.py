"""The training loader and the per-user export loader: timeline batches, each history cut before a request.

**Training** (:class:`Loader`). One batch row is one example (user, request time, candidate, labels). Row b's
explicit and implicit timelines are that user's events with ``ts < request_ts[b] - gap`` (the 24 h gap of the
distant-interest objective, paper section 2.3.3), optionally only the most recent ``max_events``. A user with
several examples in one batch appears in several rows, each cut at its own request time — the slicing ops then
need no per-row request logic beyond ``request_ts``.

**Export** (:class:`UserLoader`). One row per user in user-id order, the history cut at ``ts < cutoff`` and
``request_ts = cutoff + gap``, so that time windows see the same "request - gap" geometry as in training
(paper section 2.4: every user's embedding at a cut-off time).

Batches are cut from one shard at a time, from the shard's columnar cache (``dv365.data.cache``: decoded once,
memory-mapped) or, with ``cache=False``, from its Parquet files. Each row's cut point is found by a binary search
within the user's events, done for all rows at once (for the export, once per shard: every user has the same
cut-off); the rows are then copied as whole slices straight into the output tensors (pinned when CUDA is present,
else memory the loader reuses), ``workers`` batches at a time, delivered in order: in threads (numpy releases the
GIL while it copies; the training loader's default) or in worker processes writing into shared memory
(``dv365.data.procs``; the export loader's default where there are two or more workers). Batches do not straddle
shards (a shard's last batch may be short unless ``drop_last``).

**Data-parallel training** (``rank`` / ``world_size``): the global batch of ``batch_size * world_size`` examples
is cut exactly as a single-process loader with that batch size cuts it; rank r takes rows
``[r * batch_size, (r + 1) * batch_size)`` of it. A short last global batch of a shard is split as evenly as
possible in contiguous order (the first ``m % world_size`` ranks get one row more); one with fewer rows than
``world_size`` is dropped on every rank, so every rank yields the same number of non-empty batches.

**Exact resume.** ``state_dict()`` records the epoch and the number of batches the consumer has received (not
what the prefetcher prepared) plus what identifies the data and the batch configuration; after
``load_state_dict`` the next ``iter()`` starts at the next batch, skipping whole shards without reading them and
the rest of a shard without gathering it. Shuffled orders derive from ``(seed, epoch)`` and ``(seed, epoch,
shard)``, so a resumed epoch has the same order as an uninterrupted one.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..timeline import EXPLICIT, IMPLICIT, TimelineBatch
from . import procs
from .cache import ShardArrays, ShardCache, cache_dir, decode_shard
from .parquet import Dataset
from .schema import EXAMPLES, LABEL_COLUMNS, TASKS, DataError

_KINDS = (EXPLICIT, IMPLICIT)
_EXAMPLE_COLUMNS = ("user_id", "request_ts", "item_id", "author_id", "topic_id", "media_type", "video_duration",
                    *LABEL_COLUMNS, "watch_time")
_I64, _I8, _F32 = np.dtype(np.int64), np.dtype(np.int8), np.dtype(np.float32)
_RUN_MIN_EVENTS = 64  # mean events per row from which slice copies beat an index gather


@dataclasses.dataclass(frozen=True)
class Examples:
    """Per-row example fields; ``labels[:, k]`` is task ``TASKS[k]``, ``label_mask`` is False where unobserved."""

    user_id: torch.Tensor  # int64 [B]
    request_ts: torch.Tensor  # int64 [B]
    item_id: torch.Tensor  # int64 [B]
    author_id: torch.Tensor  # int64 [B]
    topic_id: torch.Tensor  # int64 [B]
    media_type: torch.Tensor  # int8 [B]
    video_duration: torch.Tensor  # float32 [B], 0 where unknown (see video_duration_mask)
    video_duration_mask: torch.Tensor  # bool [B]
    labels: torch.Tensor  # float32 [B, 9]
    label_mask: torch.Tensor  # bool [B, 9]
    watch_time: torch.Tensor  # float32 [B]
    watch_time_mask: torch.Tensor  # bool [B]

    tasks = TASKS

    def __len__(self) -> int:
        return self.user_id.numel()

    def _map(self, fn) -> Examples:
        return Examples(**{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Examples:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Examples:
        return self._map(lambda t: t.pin_memory())


@dataclasses.dataclass(frozen=True)
class Batch:
    """A training batch: row b of both timelines belongs to example b."""

    explicit: TimelineBatch
    implicit: TimelineBatch
    examples: Examples

    def __len__(self) -> int:
        return len(self.examples)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(self.explicit.to(device, non_blocking), self.implicit.to(device, non_blocking),
                     self.examples.to(device, non_blocking))

    def pin_memory(self) -> Batch:
        return Batch(self.explicit.pin_memory(), self.implicit.pin_memory(), self.examples.pin_memory())


@dataclasses.dataclass(frozen=True)
class UserBatch:
    """An export batch: row b is user ``user_id[b]``, its history cut at ``request_ts[b] - gap``."""

    user_id: torch.Tensor  # int64 [B], ascending
    explicit: TimelineBatch
    implicit: TimelineBatch
    request_ts: torch.Tensor  # int64 [B], cutoff + gap on every row

    def __len__(self) -> int:
        return self.user_id.numel()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> UserBatch:
        return UserBatch(self.user_id.to(device, non_blocking=non_blocking), self.explicit.to(device, non_blocking),
                         self.implicit.to(device, non_blocking), self.request_ts.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> UserBatch:
        return UserBatch(self.user_id.pin_memory(), self.explicit.pin_memory(), self.implicit.pin_memory(),
                         self.request_ts.pin_memory())


def dataset_fingerprint(dataset: Dataset) -> str:
    """A short digest of the dataset's content (every shard's user range and file checksums, from the manifest):
    loader states carry it so that a state is never applied to other data."""
    shards = [[s["first_user"], s["end_user"], [s["files"][t]["sha256"] for t in sorted(s["files"])]]
              for s in dataset.manifest["shards"]]
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()[:16]


class _Arenas:
    """Reusable memory for unpinned batches. Writing into freshly allocated memory costs a page fault per page
    (3-6x a plain copy on the development machine), so each batch is carved from an arena that the pool hands out
    again once every tensor of the batch that used it is gone (nothing but the pool references it). Pinned
    batches come from CUDA's caching host allocator instead, which already reuses its blocks."""

    def __init__(self, keep: int):
        self.keep, self.lock, self.arenas = keep, threading.Lock(), [np.empty(1, dtype=np.uint8)]
        self.idle = self._refs(0)  # the reference count of an arena only the pool holds, measured, not assumed
        self.arenas.clear()

    def _refs(self, i: int) -> int:
        return sys.getrefcount(self.arenas[i])

    def take(self, nbytes: int) -> np.ndarray:
        with self.lock:
            idle = [i for i in range(len(self.arenas)) if self._refs(i) == self.idle]
            fits = [i for i in idle if self.arenas[i].nbytes >= nbytes]
            if fits:
                return self.arenas[min(fits, key=lambda i: self.arenas[i].nbytes)][:nbytes]
            arena = np.empty(-(-(nbytes + nbytes // 4) // (1 << 20)) << 20, dtype=np.uint8)  # 25 % slack, whole MiB
            if idle:  # replace the largest idle arena that is too small
                self.arenas[max(idle, key=lambda i: self.arenas[i].nbytes)] = arena
            elif len(self.arenas) < self.keep:
                self.arenas.append(arena)
            return arena[:nbytes]  # slicing under the lock: no other thread can see it idle


_TORCH = {np.dtype(np.int64): torch.int64, np.dtype(np.int8): torch.int8, np.dtype(np.float32): torch.float32}


class _Memory:
    """The output tensors of one batch: pinned, or carved from one arena of :class:`_Arenas` (64-byte aligned)."""

    def __init__(self, shapes: list[tuple[tuple[int, ...], np.dtype]], pin: bool, arenas: _Arenas | None):
        self.pin, self.buf, self.pos = pin, None, 0
        if not pin and arenas is not None:
            self.buf = arenas.take(sum(-(-int(np.prod(sh)) * dt.itemsize // 64) * 64 for sh, dt in shapes))

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
        if self.buf is None:
            return torch.empty(shape, dtype=_TORCH[dtype], pin_memory=self.pin)
        size = int(np.prod(shape)) * dtype.itemsize
        a = self.buf[self.pos : self.pos + size].view(dtype).reshape(shape)
        self.pos += -(-size // 64) * 64
        return torch.from_numpy(a)


class _Timeline:
    """One shard's timeline: the cache's arrays (memory-mapped, or decoded in memory) and its per-user offsets."""

    def __init__(self, kind: str, arrays: ShardArrays, first_user: int, fill_missing: float | None, has_missing: bool):
        self.kind, self.first = kind, first_user
        self.user_offsets, self.ts = arrays[f"{kind}.offsets"], arrays[f"{kind}.ts"]
        self.ts_base = int(arrays[f"{kind}.ts_base"][0])
        self.ids, self.cats, self.floats = arrays[f"{kind}.ids"], arrays[f"{kind}.cats"], arrays[f"{kind}.floats"]
        # NaN (unknown) floats are replaced in each gathered batch, only when the manifest says there are any
        self.fill_value = np.float32(fill_missing) if has_missing and self.floats.shape[0] else None

    def bounds(self, user: np.ndarray, cutoff: np.ndarray, max_events: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Row ranges ``[start, end)`` of each user's events with ``ts < cutoff``: a binary search over every
        row's own range at once (log2 of the longest history steps, each a few numpy calls over the rows)."""
        u = user - self.first
        start, end = self.user_offsets[u], self.user_offsets[u + 1]
        if self.ts.size == 0:
            return start, end
        # the cut-off in the stored units; uint32 offsets compare as int64 (clipped so the difference cannot wrap)
        c = np.clip(cutoff - self.ts_base, -1, 1 << 32) if self.ts.dtype == np.uint32 else cutoff
        # rows whose whole history lies before the cut-off (the export's usual case) need no search
        last = self.ts[np.maximum(end - 1, 0)].astype(np.int64)
        todo = np.flatnonzero((end > start) & (last >= c))
        if todo.size:
            lo, hi, ct = start[todo], end[todo], c[todo]  # invariant: ts[< lo] < c <= ts[>= hi] within the row
            for _ in range(int(hi.max() - lo.min()).bit_length() + 1):
                live = lo < hi
                if not live.any():
                    break
                mid = (lo + hi) >> 1
                below = live & (self.ts[np.minimum(mid, end[todo] - 1)].astype(np.int64) < ct)
                lo = np.where(below, mid + 1, lo)
                hi = np.where(live & ~below, mid, hi)
            end = end.copy()
            end[todo] = lo
        if max_events is not None:
            start = np.maximum(start, end - max_events)
        return start, end

    def shapes(self, rows: int, n: int) -> list[tuple[tuple[int, ...], np.dtype]]:
        """The output arrays of a batch of ``rows`` rows and ``n`` events (for :class:`_Memory`)."""
        return [((rows + 1,), _I64), ((n,), _I64), ((self.ids.shape[0], n), _I64), ((self.cats.shape[0], n), _I8),
                ((self.floats.shape[0], n), _F32)]

    def gather(self, start: np.ndarray, end: np.ndarray, validate: bool, mem: _Memory) -> TimelineBatch:
        """Rows ``[start[b], end[b])`` as one batch, written straight into ``mem``'s (pinned or reused) tensors."""
        n = int((end - start).sum())
        offsets, ts, ids, cats, floats = (mem.empty(shape, dtype) for shape, dtype in self.shapes(start.size, n))
        self.fill(start, end, [offsets.numpy(), ts.numpy(), ids.numpy(), cats.numpy(), floats.numpy()])
        return (TimelineBatch if validate else TimelineBatch.trusted)(
            kind=self.kind, offsets=offsets, ids=ids, ts=ts, cats=cats, floats=floats
        )

    def fill(self, start: np.ndarray, end: np.ndarray, outs: list[np.ndarray]) -> None:
        """Write rows ``[start[b], end[b])`` into ``outs`` (numpy arrays of :meth:`shapes`: offsets, ts, ids, cats,
        floats); the narrow on-disk types (``dv365.data.cache``) are widened by the copy. Numpy only (no torch),
        so that forked loader processes can run it."""
        off, ts_out = outs[0], outs[1]
        lengths = end - start
        rows = lengths.size
        off[0] = 0
        np.cumsum(lengths, out=off[1:])
        n = int(off[-1])
        pairs = [(ts_out, self.ts), (outs[2], self.ids), (outs[3], self.cats), (outs[4], self.floats)]
        if n >= _RUN_MIN_EVENTS * rows:
            # long rows: copy runs of adjacent ranges as slices (memcpy speed, the GIL released), no index array
            brk = np.flatnonzero(start[1:] != end[:-1]) + 1
            first_row = np.concatenate(([0], brk))
            last_row = np.concatenate((brk, [rows])) - 1
            for lo, hi, d in zip(start[first_row].tolist(), end[last_row].tolist(), off[first_row].tolist()):
                if hi > lo:
                    for out, src in pairs:
                        out[..., d : d + hi - lo] = src[..., lo:hi]
        elif n:
            idx = np.arange(n, dtype=np.int64)
            idx += np.repeat(start - off[:-1], lengths)
            for out, src in pairs:
                if src.ndim == 1:
                    out[:] = src[idx]
                else:
                    for i in range(src.shape[0]):
                        out[i] = src[i][idx]
        if self.ts_base:
            ts_out += self.ts_base
        if self.fill_value is not None:
            np.copyto(outs[4], self.fill_value, where=np.isnan(outs[4]))


def _shapes(tl: dict[str, _Timeline], bounds: list[tuple[np.ndarray, np.ndarray]]) -> list:
    """The output arrays of both timelines of a batch whose rows are ``bounds`` (per timeline: starts, ends)."""
    return [s for kind, (a, b) in zip(_KINDS, bounds) for s in tl[kind].shapes(a.size, int((b - a).sum()))]


def _timelines(arrays: list[torch.Tensor], validate: bool) -> list[TimelineBatch]:
    """Both timelines from a worker-filled batch's arrays (the order of :func:`_shapes`)."""
    make = TimelineBatch if validate else TimelineBatch.trusted
    return [make(kind=kind, offsets=o, ts=t, ids=i, cats=c, floats=f)
            for kind, (o, t, i, c, f) in zip(_KINDS, (arrays[:5], arrays[5:]))]


def _nan_to(col: np.ndarray, value: float) -> tuple[torch.Tensor, torch.Tensor]:
    ok = ~np.isnan(col)
    return torch.from_numpy(np.where(ok, col, np.float32(value)).astype(np.float32)), torch.from_numpy(ok)


def _check_cut(who: str, batch_size: int, gap: int, max_events: int | None) -> None:
    """The arguments both loaders cut histories with."""
    if batch_size < 1:
        raise ValueError(f"{who}: batch_size must be >= 1, got {batch_size}")
    if gap < 0:
        raise ValueError(f"{who}: gap must be >= 0 seconds, got {gap}")
    if max_events is not None and max_events < 0:
        raise ValueError(f"{who}: max_events must be >= 0 or None, got {max_events}")


def _check_fill_missing(dataset: Dataset, fill_missing: float | None, who: str) -> None:
    if fill_missing is None:
        missing = dataset.missing_floats()
        if missing:
            raise DataError(
                f"{who}: {dataset.path} has missing implicit {missing} (see its manifest null_counts); "
                "pass fill_missing=<value> to choose what the timelines carry for them"
            )


def _check_shards(dataset: Dataset, shards: Iterable[int] | None, who: str) -> list[int]:
    if shards is None:
        return list(range(dataset.num_shards))
    out = [int(k) for k in shards]
    bad = [k for k in out if not 0 <= k < dataset.num_shards]
    if bad:
        raise ValueError(f"{who}: shards {bad} out of range [0, {dataset.num_shards})")
    if len(set(out)) != len(out):
        raise ValueError(f"{who}: shards must not repeat, got {out}")
    return out


class _Shards:
    """The shards' timelines (and examples), from the columnar cache or decoded from Parquet; the most recent
    ``keep`` stay referenced. Thread-safe: concurrent workers wait for a shard another one is loading."""

    def __init__(self, dataset: Dataset, fill_missing: float | None, cache, keep: int = 3):
        self.dataset, self.fill_missing, self.keep = dataset, fill_missing, keep
        root = cache_dir(dataset, cache)
        self.cache = ShardCache(dataset, root) if root is not None else None
        self.has_missing = bool(dataset.missing_floats())
        self.lock = threading.Lock()
        self.loaded: collections.OrderedDict[int, list] = collections.OrderedDict()

    def get(self, k: int) -> tuple[dict[str, _Timeline], ShardArrays]:
        with self.lock:
            entry = self.loaded.get(k)
            if entry is None:
                entry = self.loaded[k] = [threading.Lock(), None]
                while len(self.loaded) > self.keep:
                    self.loaded.popitem(last=False)
            else:
                self.loaded.move_to_end(k)
        with entry[0]:
            if entry[1] is None:
                arrays = self.cache.get(k) if self.cache is not None else decode_shard(self.dataset, k)
                first, _ = self.dataset.shard_users(k)
                tl = {kind: _Timeline(kind, arrays, first, self.fill_missing, self.has_missing) for kind in _KINDS}
                entry[1] = (tl, arrays)
            return entry[1]


def _default_workers(processes: bool = False) -> int:
    """Workers per loader from the cores this process may use, shared by the local ranks: threads, at most 8
    (more do not add throughput: the GIL); processes, one core left to the consumer, at least 2, at most 16."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    mine = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(2, min(16, mine - 1)) if processes else max(1, min(8, mine))


def _run(tasks: Iterator[Any], make: Callable[[Any], Any], workers: int, prefetch: int) -> Iterator[Any]:
    """``make(task)`` for every task, in task order. ``workers`` threads build batches concurrently, at most
    ``workers + prefetch`` ahead of the consumer; ``prefetch <= 0`` and ``workers <= 1`` build them in the
    caller. Errors reach the caller in order; stopping early cancels what is queued."""
    if prefetch <= 0 and workers <= 1:
        for t in tasks:
            yield make(t)
        return
    workers = max(1, workers)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dv365-loader")
    window: collections.deque = collections.deque()
    try:
        for t in tasks:
            window.append(pool.submit(make, t))
            if len(window) > workers + max(0, prefetch) - 1:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        for f in window:
            f.cancel()
        pool.shutdown(wait=False)


def _check_state(who: str, state: dict[str, Any], mine: dict[str, Any]) -> None:
    missing = sorted(set(mine) - set(state))
    if missing:
        raise ValueError(f"{who}.load_state_dict: the state lacks {missing} (not a {who} state?)")
    if state["dataset"] != mine["dataset"]:
        raise ValueError(f"{who}.load_state_dict: the state is from a different dataset "
                         f"(fingerprint {state['dataset']}, this dataset {mine['dataset']})")
    for key, value in mine.items():
        if key in ("epoch", "batches", "dataset"):
            continue
        if state[key] != value:
            raise ValueError(f"{who}.load_state_dict: the state has {key}={state[key]!r}, this loader {key}={value!r}")


class _Builders:
    """Who builds a loader's batches: ``workers`` threads (:func:`_run`) or ``workers`` forked processes writing
    whole batches into shared memory (``dv365.data.procs``). Both give the same batches in the same order. The
    processes are kept between passes until :meth:`close` or until the loader is collected; a pass that ends early
    (an error, the consumer stopping) stops them, so nothing in flight outlives it.

    A loader plans each batch (``_plan(task)`` -> shard k's timelines, the rows per timeline, the output shapes and
    what ``_finish(ctx, timelines)`` needs besides the timelines) and names it for errors (``_what(task)``); every
    task starts with its shard k."""

    validate = False  # TimelineBatch.validate on every batch (the training loader's option)

    def _init_builders(self, who: str, mode: str, workers: int | None, cache) -> None:
        if mode not in ("auto", "process", "thread"):
            raise ValueError(f"{who}: mode must be 'auto', 'process' or 'thread', got {mode!r}")
        if mode == "process" and not procs.available():
            raise ValueError(f"{who}: mode='process' needs Linux (fork, memfd) outside a daemonic process")
        self._who, self.mode = who, mode
        self._cache = cache
        self._shards = _Shards(self.dataset, self.fill_missing, cache)
        self.workers = _default_workers(mode != "thread" and procs.available()) if workers is None else int(workers)
        if self.workers < 1:
            raise ValueError(f"{who}: workers must be >= 1, got {self.workers}")
        self._arenas = _Arenas(keep=self.workers + max(0, self.prefetch) + 4)
        self._pool: procs.ProcessPool | None = None

    @property
    def uses_processes(self) -> bool:
        """Whether batches are built in worker processes (``mode``: 'auto' = processes for ``workers >= 2`` where
        available, else threads)."""
        if self.mode == "auto":
            return self.workers >= 2 and procs.available()
        return self.mode == "process"

    def close(self) -> None:
        """Stop the worker processes (they are kept between passes; also stopped when the loader is collected)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _make(self, task: Any) -> Any:
        """One batch built in this thread, into pinned or reused memory."""
        tl, bounds, shapes, ctx = self._plan(task)
        mem = _Memory(shapes, self.pin_memory, self._arenas)
        return self._finish(ctx, [tl[kind].gather(a, b, self.validate, mem) for kind, (a, b) in zip(_KINDS, bounds)])

    def _build(self, tasks: Iterator[Any]) -> Iterator[Any]:
        """The batches of ``tasks`` in order, from the threads or the worker processes."""
        if not self.uses_processes:
            return _run(tasks, self._make, self.workers, self.prefetch)
        return self._processes(tasks)

    def _processes(self, tasks: Iterator[Any]) -> Iterator[Any]:
        """The batches built by the worker processes: planned here, their timelines copied by
        :func:`_fill_in_worker` into an arena, finished here on the arena's arrays."""
        if self._pool is None or self._pool.closed:
            dataset, fill_missing, cache = self.dataset, self.fill_missing, self._cache
            self._pool = procs.ProcessPool(self.workers, lambda: _Shards(dataset, fill_missing, cache),
                                           _fill_in_worker, self._who, pin=self.pin_memory,
                                           keep=self.workers + max(0, self.prefetch) + 4)
        pool = self._pool
        depth = len(pool) + max(0, self.prefetch)
        window: collections.deque = collections.deque()
        seq, finished = 0, False

        def receive() -> Any:
            s, arena, task, ctx, shapes = window.popleft()
            pool.result(s, self._what(task))
            pool.release(arena)
            arrays = [torch.from_numpy(a) for a in procs.carve(pool.bufs[arena], shapes)]
            return self._finish(ctx, _timelines(arrays, self.validate))

        try:
            for task in tasks:
                _, bounds, shapes, ctx = self._plan(task)
                arena = pool.take(procs.layout(shapes)[1])
                pool.submit(seq, arena, (task[0], bounds))
                window.append((seq, arena, task, ctx, shapes))
                seq += 1
                if len(window) >= depth:
                    yield receive()
            while window:
                yield receive()
            finished = True
        finally:
            if not finished:  # an error, or the consumer stopped early: nothing in flight may outlive the pass
                pool.close(graceful=False)
                self._pool = None


class Loader(_Builders):
    """Iterate :class:`Batch` es of ``batch_size`` examples (per rank) over ``dataset`` (module docstring).

    ``max_events``: keep only each timeline's most recent events (e.g. 500 for a short-history baseline).
    ``shuffle``: shard order and example order within a shard, from ``seed`` and the epoch.
    ``fill_missing``: value for unknown ``video_duration`` / ``dwell_time`` in the timelines; required (an error
    otherwise) when the dataset has any, so that no value is invented silently.
    ``pin_memory``: default True when CUDA is available.
    ``shards``: the shard indices to read (default all), in this order unless ``shuffle``.
    ``validate``: run ``TimelineBatch.validate`` on every batch (the shards are already checked on read).
    ``rank`` / ``world_size``: data-parallel training, ``batch_size`` per rank (module docstring).
    ``mode``: who builds the batches — ``"thread"`` (default): ``workers`` threads; ``"process"``: ``workers``
    forked processes writing whole batches into shared memory (``dv365.data.procs``; they never hold this
    process's GIL, which the training step's kernel dispatch needs); ``"auto"``: processes when ``workers >= 2``
    on Linux, else threads. Both give the same batches in the same order. Threads are the default for training
    because processes were not reliably faster inside a W40K training step on one H100 host (docs/data.md), and
    because a pinned thread loader that followed a pinned process loader in one process has failed to allocate
    pinned memory on CUDA (``cudaErrorAlreadyMapped``, intermittently; not understood). ``workers`` default: for
    processes the usable cores (shared by ``LOCAL_WORLD_SIZE`` ranks) minus one, 2 to 16; for threads the usable
    cores, at most 8. ``prefetch``: finished batches kept ready beyond the workers'. Call :meth:`close` to stop
    the processes before the loader is collected.
    ``cache``: the decoded columnar cache (``dv365.data.cache``): None = the default location, built on first
    use (``DV365_DATA_CACHE=0`` disables it), False = decode Parquet every epoch, a path = that directory.

    The loader keeps its position: each ``iter()`` continues where the consumer stopped, and finishing an epoch
    moves to the next (so shuffled epochs differ without calling :meth:`set_epoch`).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 32,
        gap: int = 86400,
        *,
        max_events: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        prefetch: int = 2,
        pin_memory: bool | None = None,
        fill_missing: float | None = None,
        shards: list[int] | None = None,
        validate: bool = False,
        rank: int = 0,
        world_size: int = 1,
        workers: int | None = None,
        cache: bool | str | os.PathLike | None = None,
        mode: str = "thread",
    ):
        _check_cut("Loader", batch_size, gap, max_events)
        if world_size < 1:
            raise ValueError(f"Loader: world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"Loader: rank must lie in [0, world_size={world_size}), got {rank}")
        self.dataset, self.batch_size, self.gap = dataset, int(batch_size), int(gap)
        self.max_events, self.shuffle, self.seed, self.drop_last = max_events, bool(shuffle), int(seed), bool(drop_last)
        self.prefetch = prefetch
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.fill_missing = fill_missing
        self.validate = validate
        self.rank, self.world_size = int(rank), int(world_size)
        self.shards = _check_shards(dataset, shards, "Loader")
        _check_fill_missing(dataset, fill_missing, "Loader")
        self.fingerprint = dataset_fingerprint(dataset)
        self._rows = {k: dataset.manifest["shards"][k]["files"][EXAMPLES]["rows"] for k in self.shards}
        self._init_builders("Loader", mode, workers, cache)
        self.epoch = 0
        self._batches = 0  # batches of this epoch the consumer has received

    # position ----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` at its first batch; the current epoch keeps its position (so a training loop that
        calls ``set_epoch(e)`` at the top of every epoch resumes mid-epoch after :meth:`load_state_dict`)."""
        if epoch != self.epoch:
            self.epoch, self._batches = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        """The position (``epoch``, ``batches`` received in it) and what it is valid for; the same on every rank."""
        return {"epoch": self.epoch, "batches": self._batches, "seed": self.seed, "shuffle": self.shuffle,
                "batch_size": self.batch_size, "world_size": self.world_size, "drop_last": self.drop_last,
                "gap": self.gap, "max_events": self.max_events, "shards": list(self.shards), "dataset": self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`): the next ``iter()`` yields the batch after the last one
        received. Raises ``ValueError`` when the state is from another dataset or batch configuration."""
        _check_state("Loader", state, self.state_dict())
        batches = int(state["batches"])
        if not 0 <= batches <= len(self):
            raise ValueError(f"Loader.load_state_dict: batches={batches} is outside this epoch's [0, {len(self)}]")
        self.epoch, self._batches = int(state["epoch"]), batches

    # layout ------------------------------------------------------------------------------------
    def _shard_batches(self, rows: int) -> int:
        g = self.batch_size * self.world_size
        full, rest = divmod(rows, g)
        return full + (1 if rest and not self.drop_last and rest >= self.world_size else 0)

    def _rank_rows(self, rows: int, j: int) -> tuple[int, int]:
        """This rank's rows ``[lo, hi)`` (positions in the shard's example order) of the shard's global batch j."""
        g = self.batch_size * self.world_size
        lo = j * g
        size = min(g, rows - lo)
        if size == g:
            return lo + self.rank * self.batch_size, lo + (self.rank + 1) * self.batch_size
        q, rem = divmod(size, self.world_size)
        start = lo + self.rank * q + min(self.rank, rem)
        return start, start + q + (self.rank < rem)

    def __len__(self) -> int:
        return sum(self._shard_batches(self._rows[k]) for k in self.shards)

    def _tasks(self, epoch: int, skip: int) -> Iterator[tuple[int, np.ndarray]]:
        order = self.shards
        if self.shuffle:
            order = [self.shards[i] for i in np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))]
        for k in order:
            rows = self._rows[k]
            count = self._shard_batches(rows)
            if skip >= count:  # cheap skip: this shard is neither read nor permuted
                skip -= count
                continue
            perm = np.random.default_rng([self.seed, epoch, k]).permutation(rows) if self.shuffle else None
            for j in range(skip, count):
                lo, hi = self._rank_rows(rows, j)
                yield k, (perm[lo:hi] if perm is not None else np.arange(lo, hi))
            skip = 0

    def _plan(self, task: tuple[int, np.ndarray]) -> tuple[dict[str, _Timeline], list, list, dict[str, np.ndarray]]:
        """Shard k's timelines, the batch's rows per timeline, its output arrays' shapes and its example columns."""
        k, sel = task
        tl, arrays = self._shards.get(k)
        ex = {c: arrays[f"{EXAMPLES}.{c}"][sel] for c in _EXAMPLE_COLUMNS}
        cutoff = ex["request_ts"] - self.gap
        bounds = [tl[kind].bounds(ex["user_id"], cutoff, self.max_events) for kind in _KINDS]
        return tl, bounds, _shapes(tl, bounds), ex

    @staticmethod
    def _what(task: tuple[int, np.ndarray]) -> str:
        return f" (shard {task[0]}, {task[1].size} examples)"

    def _finish(self, ex: dict[str, np.ndarray], timelines: list[TimelineBatch]) -> Batch:
        labels = np.stack([ex[c] for c in LABEL_COLUMNS], axis=1)
        label_mask = ~np.isnan(labels)
        dur, dur_ok = _nan_to(ex["video_duration"], 0.0)
        watch, watch_ok = _nan_to(ex["watch_time"], 0.0)
        examples = Examples(
            user_id=torch.from_numpy(ex["user_id"]),
            request_ts=torch.from_numpy(ex["request_ts"]),
            item_id=torch.from_numpy(ex["item_id"]),
            author_id=torch.from_numpy(ex["author_id"]),
            topic_id=torch.from_numpy(ex["topic_id"]),
            media_type=torch.from_numpy(ex["media_type"]),
            video_duration=dur,
            video_duration_mask=dur_ok,
            labels=torch.from_numpy(np.where(label_mask, labels, np.float32(0)).astype(np.float32)),
            label_mask=torch.from_numpy(label_mask),
            watch_time=watch,
            watch_time_mask=watch_ok,
        )
        return Batch(timelines[0], timelines[1], examples.pin_memory() if self.pin_memory else examples)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        source = self._build(self._tasks(epoch, self._batches))
        try:
            for batch in source:
                self._batches += 1  # counted when the consumer receives it, however far the prefetcher is ahead
                yield batch
        finally:
            source.close()
        if self.epoch == epoch:
            self.epoch, self._batches = epoch + 1, 0


class UserLoader(_Builders):
    """Iterate :class:`UserBatch` es of ``batch_size`` users: every user of ``dataset`` once, in user-id order, each
    history cut at ``ts < cutoff`` with ``request_ts = cutoff + gap`` (module docstring).

    ``cutoff`` (required): the export's cut-off time in seconds. ``users=(lo, hi)``: only users ``lo <= u < hi``.
    ``only_users``: only these users (sorted ascending, e.g. from :func:`users_with_new_events`), intersected
    with ``users``. ``shards``: only these shards. Users without events get empty timelines. Batches do not
    straddle shards. ``max_events``, ``fill_missing``, ``prefetch``, ``pin_memory``, ``cache`` as for :class:`Loader`.
    ``mode``: who builds the batches — ``"process"``: ``workers`` forked processes writing whole batches into
    shared memory (``dv365.data.procs``; no GIL, so they scale with the cores), ``"thread"``: ``workers`` threads
    as in :class:`Loader`, ``"auto"`` (default): processes when ``workers >= 2`` on Linux, else threads; ``workers``
    as for :class:`Loader`. The processes are kept between passes until :meth:`close` or until the loader is
    collected; a pass that ends early (an error, the consumer stopping) stops them.
    ``state_dict`` / ``load_state_dict`` resume an interrupted export at the next batch.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 256,
        cutoff: int | None = None,
        gap: int = 86400,
        *,
        users: tuple[int, int] | None = None,
        only_users: np.ndarray | None = None,
        shards: list[int] | None = None,
        max_events: int | None = None,
        fill_missing: float | None = None,
        prefetch: int = 2,
        pin_memory: bool | None = None,
        workers: int | None = None,
        cache: bool | str | os.PathLike | None = None,
        mode: str = "auto",
    ):
        if cutoff is None:
            raise TypeError("UserLoader: cutoff (the export's cut-off time in seconds) is required")
        _check_cut("UserLoader", batch_size, gap, max_events)
        if users is not None:
            lo, hi = (int(u) for u in users)
            if not 0 <= lo <= hi:
                raise ValueError(f"UserLoader: users must be a range (lo, hi) with 0 <= lo <= hi, got {users}")
            users = (lo, hi)
        if only_users is not None:
            only_users = np.asarray(only_users)
            if only_users.ndim != 1 or (only_users.size and only_users.dtype.kind not in "iu"):
                raise ValueError(f"UserLoader: only_users must be a 1-D integer array, got {only_users.dtype} {only_users.shape}")
            only_users = only_users.astype(np.int64)
            if only_users.size > 1 and (np.diff(only_users) <= 0).any():
                raise ValueError("UserLoader: only_users must be sorted ascending without repeats")
        self.dataset, self.batch_size, self.cutoff, self.gap = dataset, int(batch_size), int(cutoff), int(gap)
        self.users, self.only_users, self.max_events = users, only_users, max_events
        self.fill_missing, self.prefetch = fill_missing, prefetch
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.shards = _check_shards(dataset, shards, "UserLoader")
        _check_fill_missing(dataset, fill_missing, "UserLoader")
        self.fingerprint = dataset_fingerprint(dataset)
        self._only_digest = None if only_users is None else hashlib.sha256(only_users.tobytes()).hexdigest()[:16]
        self._init_builders("UserLoader", mode, workers, cache)
        self._users = {k: self._shard_users(k) for k in self.shards}
        self._batches = 0
        self._cuts: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self._cuts_lock = threading.Lock()

    def _shard_users(self, k: int) -> np.ndarray | tuple[int, int]:
        """Shard k's users to export: a range ``(lo, hi)``, or an array with ``only_users``."""
        lo, hi = self.dataset.shard_users(k)
        if self.users is not None:
            lo, hi = max(lo, self.users[0]), min(hi, self.users[1])
        hi = max(lo, hi)
        if self.only_users is None:
            return lo, hi
        a, b = np.searchsorted(self.only_users, [lo, hi])
        return self.only_users[a:b]

    @staticmethod
    def _count(users: np.ndarray | tuple[int, int]) -> int:
        return users[1] - users[0] if isinstance(users, tuple) else users.size

    def __len__(self) -> int:
        return sum(-(-self._count(u) // self.batch_size) for u in self._users.values())

    @property
    def num_users(self) -> int:
        return sum(self._count(u) for u in self._users.values())

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self._batches, "batch_size": self.batch_size, "cutoff": self.cutoff, "gap": self.gap,
                "max_events": self.max_events, "users": None if self.users is None else list(self.users),
                "only_users": self._only_digest, "shards": list(self.shards), "dataset": self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue an export from ``state``; raises ``ValueError`` for another dataset or configuration."""
        _check_state("UserLoader", state, self.state_dict())
        batches = int(state["batches"])
        if not 0 <= batches <= len(self):
            raise ValueError(f"UserLoader.load_state_dict: batches={batches} is outside [0, {len(self)}]")
        self._batches = batches

    def _tasks(self, skip: int) -> Iterator[tuple[int, np.ndarray]]:
        for k in self.shards:
            users = self._users[k]
            n = self._count(users)
            count = -(-n // self.batch_size)
            if skip >= count:
                skip -= count
                continue
            for j in range(skip, count):
                lo, hi = j * self.batch_size, min(n, (j + 1) * self.batch_size)
                yield k, lo, (np.arange(users[0] + lo, users[0] + hi, dtype=np.int64) if isinstance(users, tuple)
                              else users[lo:hi])
            skip = 0

    def _shard_cuts(self, k: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every exported user's rows ``[start, end)`` in shard k, per timeline: the cut-off is the same for all,
        so one vectorised search per shard serves all its batches (the most recent two shards are kept)."""
        with self._cuts_lock:
            cuts = self._cuts.get(k)
            if cuts is None:
                tl, _ = self._shards.get(k)
                users = self._users[k]
                u = np.arange(users[0], users[1], dtype=np.int64) if isinstance(users, tuple) else users
                cutoff = np.full(u.size, self.cutoff, dtype=np.int64)
                cuts = self._cuts[k] = {kind: tl[kind].bounds(u, cutoff, self.max_events) for kind in _KINDS}
                while len(self._cuts) > 2:
                    self._cuts.popitem(last=False)
            return cuts

    def _plan(self, task: tuple[int, int, np.ndarray]) -> tuple[dict[str, _Timeline], list, list, np.ndarray]:
        """Shard k's timelines, the batch's row bounds per timeline, its output arrays' shapes and its users."""
        k, lo, user = task
        tl, _ = self._shards.get(k)
        cuts = self._shard_cuts(k)
        bounds = [(cuts[kind][0][lo : lo + user.size], cuts[kind][1][lo : lo + user.size]) for kind in _KINDS]
        return tl, bounds, _shapes(tl, bounds), user

    @staticmethod
    def _what(task: tuple[int, int, np.ndarray]) -> str:
        k, _, user = task
        return f" (shard {k}, users {int(user[0])}..{int(user[-1])})"

    def _finish(self, user: np.ndarray, timelines: list[TimelineBatch]) -> UserBatch:
        user_id = torch.from_numpy(user)
        request_ts = torch.full((user.size,), self.cutoff + self.gap, dtype=torch.int64)
        if self.pin_memory:
            user_id, request_ts = user_id.pin_memory(), request_ts.pin_memory()
        return UserBatch(user_id, timelines[0], timelines[1], request_ts)

    def __iter__(self) -> Iterator[UserBatch]:
        source = self._build(self._tasks(self._batches))
        try:
            for batch in source:
                self._batches += 1
                yield batch
        finally:
            source.close()
        self._batches = 0


def _fill_in_worker(shards: _Shards, task: tuple[int, list], buf: np.ndarray) -> None:
    """One batch, in a worker process: shard k's rows ``bounds`` copied into ``buf`` (layout of
    :func:`dv365.data.procs.layout` over both timelines' shapes, as the parent planned it)."""
    k, bounds = task
    tl, _ = shards.get(k)
    shapes = _shapes(tl, bounds)
    arrays = procs.carve(buf, shapes)
    for j, (kind, (a, b)) in enumerate(zip(_KINDS, bounds)):
        tl[kind].fill(a, b, arrays[5 * j : 5 * j + 5])


def users_with_new_events(dataset: Dataset, since_ts: int, shards: Iterable[int] | None = None, *,
                          cache: bool | str | os.PathLike | None = None) -> np.ndarray:
    """Sorted user ids (int64) with any explicit or implicit event at ``ts >= since_ts``: the users whose
    embedding an incremental refresh must recompute (``UserLoader(..., only_users=...)``). ``cache`` as for
    :class:`Loader` (the cached shards answer without decoding Parquet)."""
    root = cache_dir(dataset, cache)
    sc = ShardCache(dataset, root) if root is not None else None
    found = [np.empty(0, dtype=np.int64)]
    for k in _check_shards(dataset, shards, "users_with_new_events"):
        if sc is None:
            for kind in _KINDS:
                cols = dataset.read_table(k, kind, ["user_id", "ts"])
                found.append(np.unique(cols["user_id"][cols["ts"] >= since_ts]))
            continue
        arrays = sc.get(k)
        first, _ = dataset.shard_users(k)
        for kind in _KINDS:
            # each user's events are sorted by time: a user has a new event iff its last one is new
            offsets, ts = arrays[f"{kind}.offsets"], arrays[f"{kind}.ts"]
            has = offsets[1:] > offsets[:-1]
            last = ts[np.maximum(offsets[1:] - 1, 0)].astype(np.int64) + int(arrays[f"{kind}.ts_base"][0])
            found.append(first + np.flatnonzero(has & (last >= since_ts)))
    return np.unique(np.concatenate(found)).astype(np.int64)
