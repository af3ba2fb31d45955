"""The training loader: timeline batches plus examples, each history cut ``gap`` seconds before its request.

One batch row is one example (user, request time, candidate, labels). Row b's explicit and implicit timelines are
that user's events with ``ts < request_ts[b] - gap`` (DESIGN.md 1.2: the 24 h gap of the distant-interest
objective), optionally only the most recent ``max_events``. A user with several examples in one batch appears in
several rows, each cut at its own request time — the slicing ops then need no per-row request logic beyond
``request_ts``.

Batches are cut from one shard at a time: the shard's three tables are read once, each timeline gets a sorted
composite key ``(user << 34) + (ts - base)`` so a whole batch's cut points are one ``searchsorted``, and the rows
are gathered with one ``np.take`` per column straight into the output tensors. Batches do not straddle shards
(a shard's last batch may be short unless ``drop_last``). A background thread prepares the
next ``prefetch`` batches (and pins them when CUDA is present).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from ..timeline import CAT_FIELDS, EXPLICIT, FLOAT_FIELDS, ID_FIELDS, IMPLICIT, TimelineBatch
from .parquet import Columns, Dataset
from .schema import EXAMPLES, LABEL_COLUMNS, TASKS, DataError

_KEY_BITS = 34  # time offsets up to 2^34 s (≈ 544 years) below the user bits


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
    explicit: TimelineBatch
    implicit: TimelineBatch
    examples: Examples

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(self.explicit.to(device, non_blocking), self.implicit.to(device, non_blocking),
                     self.examples.to(device, non_blocking))

    def pin_memory(self) -> Batch:
        return Batch(self.explicit.pin_memory(), self.implicit.pin_memory(), self.examples.pin_memory())


class _Timeline:
    """One shard's timeline with its sorted composite key."""

    def __init__(self, kind: str, cols: Columns, first_user: int, base: int, fill_missing: float | None, where: str):
        self.kind, self.cols, self.first = kind, cols, first_user
        self.base = base
        self.key = ((cols["user_id"] - first_user) << _KEY_BITS) + (cols["ts"] - base)
        for name in FLOAT_FIELDS[kind]:
            col = cols[name]
            missing = np.isnan(col)
            if missing.any():
                if fill_missing is None:
                    raise DataError(f"{where}: {int(missing.sum())} missing {name} value(s); pass fill_missing=<value>")
                cols[name] = np.where(missing, np.float32(fill_missing), col)

    def bounds(self, user: np.ndarray, cutoff: np.ndarray, max_events: int | None) -> tuple[np.ndarray, np.ndarray]:
        hi_user = (user - self.first) << _KEY_BITS
        start = np.searchsorted(self.key, hi_user)
        end = np.searchsorted(self.key, hi_user + np.clip(cutoff - self.base, 0, (1 << _KEY_BITS) - 1))
        if max_events is not None:
            start = np.maximum(start, end - max_events)
        return start, end

    def gather(self, start: np.ndarray, end: np.ndarray, validate: bool) -> TimelineBatch:
        lengths = end - start
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        n = int(offsets[-1])
        idx = np.arange(n, dtype=np.int64)
        idx += np.repeat(start - offsets[:-1], lengths)

        def block(names: tuple[str, ...], dtype: torch.dtype) -> torch.Tensor:
            out = torch.empty(len(names), n, dtype=dtype)
            view = out.numpy()
            for i, name in enumerate(names):
                np.take(self.cols[name], idx, out=view[i])
            return out

        ts = torch.empty(n, dtype=torch.int64)
        np.take(self.cols["ts"], idx, out=ts.numpy())
        return (TimelineBatch if validate else TimelineBatch.trusted)(
            kind=self.kind,
            offsets=torch.from_numpy(offsets),
            ids=block(ID_FIELDS, torch.int64),
            ts=ts,
            cats=block(CAT_FIELDS[self.kind], torch.int8),
            floats=block(FLOAT_FIELDS[self.kind], torch.float32),
        )


def _nan_to(col: np.ndarray, value: float) -> tuple[torch.Tensor, torch.Tensor]:
    ok = ~np.isnan(col)
    return torch.from_numpy(np.where(ok, col, np.float32(value)).astype(np.float32)), torch.from_numpy(ok)


class Loader:
    """Iterate ``Batch`` es of ``batch_size`` examples over ``dataset`` (module docstring).

    ``max_events``: keep only each timeline's most recent events (e.g. 500 for a short-history baseline).
    ``shuffle``: shard order and example order within a shard, from ``seed`` and :meth:`set_epoch`.
    ``fill_missing``: value for unknown ``video_duration`` / ``dwell_time`` in the timelines; required (an error
    otherwise) when the dataset has any, so that no value is invented silently.
    ``pin_memory``: default True when CUDA is available.
    ``validate``: run ``TimelineBatch.validate`` on every batch (the shards are already checked on read).
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
    ):
        if batch_size < 1:
            raise ValueError(f"Loader: batch_size must be >= 1, got {batch_size}")
        if gap < 0:
            raise ValueError(f"Loader: gap must be >= 0 seconds, got {gap}")
        if max_events is not None and max_events < 0:
            raise ValueError(f"Loader: max_events must be >= 0 or None, got {max_events}")
        self.dataset, self.batch_size, self.gap = dataset, batch_size, int(gap)
        self.max_events, self.shuffle, self.seed, self.drop_last = max_events, shuffle, seed, drop_last
        self.prefetch = prefetch
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.fill_missing = fill_missing
        self.validate = validate
        self.shards = list(range(dataset.num_shards)) if shards is None else list(shards)
        if fill_missing is None:
            missing = [c for c in FLOAT_FIELDS[IMPLICIT] if dataset.has_missing(IMPLICIT, c)]
            if missing:
                raise DataError(
                    f"Loader: {dataset.path} has missing implicit {missing} (see its manifest null_counts); "
                    "pass fill_missing=<value> to choose what the timelines carry for them"
                )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        total = 0
        for k in self.shards:
            rows = self.dataset.manifest["shards"][k]["files"][EXAMPLES]["rows"]
            total += rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)
        return total

    def _batches(self) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.shards) if self.shuffle else self.shards
        for k in order:
            yield from self._shard_batches(int(k), rng)

    def _shard_batches(self, k: int, rng: np.random.Generator) -> Iterator[Batch]:
        ds = self.dataset
        first, _ = ds.shard_users(k)
        ex = ds.read_table(k, EXAMPLES)
        if ex["user_id"].size == 0:
            return
        tl = {}
        for kind in (EXPLICIT, IMPLICIT):
            cols = ds.read_table(k, kind)
            base = min(int(cols["ts"].min()) if cols["ts"].size else 0, int(ex["request_ts"].min()) - self.gap) - 1
            tl[kind] = _Timeline(kind, cols, first, base, self.fill_missing, f"Loader: shard {k} {kind}")
        n = ex["user_id"].size
        rows = rng.permutation(n) if self.shuffle else np.arange(n)
        stop = n - n % self.batch_size if self.drop_last else n
        for lo in range(0, stop, self.batch_size):
            sel = rows[lo : lo + self.batch_size]
            user, req = ex["user_id"][sel], ex["request_ts"][sel]
            cutoff = req - self.gap
            timelines = [tl[kind].gather(*tl[kind].bounds(user, cutoff, self.max_events), self.validate) for kind in (EXPLICIT, IMPLICIT)]
            labels = np.stack([ex[c][sel] for c in LABEL_COLUMNS], axis=1)
            label_mask = ~np.isnan(labels)
            dur, dur_ok = _nan_to(ex["video_duration"][sel], 0.0)
            watch, watch_ok = _nan_to(ex["watch_time"][sel], 0.0)
            examples = Examples(
                user_id=torch.from_numpy(user),
                request_ts=torch.from_numpy(req),
                item_id=torch.from_numpy(ex["item_id"][sel]),
                author_id=torch.from_numpy(ex["author_id"][sel]),
                topic_id=torch.from_numpy(ex["topic_id"][sel]),
                media_type=torch.from_numpy(ex["media_type"][sel]),
                video_duration=dur,
                video_duration_mask=dur_ok,
                labels=torch.from_numpy(np.where(label_mask, labels, np.float32(0)).astype(np.float32)),
                label_mask=torch.from_numpy(label_mask),
                watch_time=watch,
                watch_time_mask=watch_ok,
            )
            batch = Batch(timelines[0], timelines[1], examples)
            yield batch.pin_memory() if self.pin_memory else batch

    def __iter__(self) -> Iterator[Batch]:
        if self.prefetch <= 0:
            yield from self._batches()
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for b in self._batches():
                    while not stop.is_set():
                        try:
                            q.put(b, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(done)
            except BaseException as e:  # re-raised in the consumer
                q.put(e)

        worker = threading.Thread(target=produce, name="dv365-loader", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join(timeout=5)
