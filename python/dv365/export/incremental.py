"""Which users an incremental export must recompute (``dv365 export --since VERSION``; paper 2.4, appendix B).

A user's embedding at cut-off ``C`` is η of the events the slices select, with ``request_ts = C + gap``. Slice
``s`` keeps an event at ``ts`` iff ``s.gap < request_ts - ts <= s.window`` (eq. 6) and the export cuts every
history at ``ts < C``, so each slice selects a half-open interval of event times whose ends are ``C + o`` for a
few fixed offsets ``o``:

- the history cut: ``o = 0`` (``ts < C``), or ``o = gap - s.gap`` when a slice skips more than the export gap;
- a finite window's far end: ``o = gap - s.window`` (``ts >= C + gap - window``).

Moving the cut-off from ``C0`` to ``C1 > C0`` moves every end by ``C1 - C0``; an event changes membership in
some slice iff its time lies in ``[C0 + o, C1 + o)`` for one of the offsets. A user none of whose events lies in
any of these intervals has exactly the same slice inputs at both cut-offs, hence the same embedding, and its
record is carried over; every other user is recomputed. "New events only" is not enough: a user idle since
before ``C0`` still changes when an event leaves the 3-day or 7-day window between the two cut-offs.

This assumes the new snapshot extends the old one (append-only logs): events before ``C0`` are the same in
both (late-arriving or deleted events before ``C0`` need a full export).
"""

from __future__ import annotations

import numpy as np

from ..data import Dataset
from ..spec import SliceSpec

_KINDS = ("explicit", "implicit")


def boundary_offsets(spec: SliceSpec, gap: int) -> list[int]:
    """The offsets ``o`` (seconds) of every slice-interval end ``C + o`` at cut-off ``C`` (module docstring)."""
    offsets = {0}
    for s in spec.slices:
        offsets.add(min(0, gap - s.gap))
        if s.window is not None:
            offsets.add(gap - s.window)
    return sorted(offsets)


def users_to_reexport(dataset: Dataset, spec: SliceSpec, old_cutoff: int, new_cutoff: int, gap: int,
                      progress: bool = False) -> np.ndarray:
    """Sorted user ids (int64) whose embedding may differ between cut-offs ``old_cutoff`` and ``new_cutoff``:
    every user with an event in ``[old_cutoff + o, new_cutoff + o)`` for an offset of :func:`boundary_offsets`.
    It includes :func:`dv365.data.users_with_new_events` restricted to ``ts < new_cutoff`` (``o = 0``)."""
    if new_cutoff < old_cutoff:
        raise ValueError(f"users_to_reexport: the new cut-off {new_cutoff} is before the old one {old_cutoff}")
    offsets = boundary_offsets(spec, gap)
    found = [np.empty(0, dtype=np.int64)]
    shards = range(dataset.num_shards)
    if progress:
        from tqdm import tqdm

        shards = tqdm(shards, desc="changed users", unit="shard", dynamic_ncols=True)
    cache = _cache(dataset)
    for k in shards:
        for kind in _KINDS:
            user, ts = _events(dataset, cache, k, kind)
            hit = np.zeros(ts.shape, dtype=bool)
            for o in offsets:
                hit |= (ts >= old_cutoff + o) & (ts < new_cutoff + o)
            found.append(np.unique(user[hit]))
    return np.unique(np.concatenate(found)).astype(np.int64)


def _cache(dataset: Dataset):
    """The loader's decoded columnar cache (built on first use, shared with the export's loader), or None."""
    from ..data.cache import ShardCache, cache_dir

    root = cache_dir(dataset)
    return ShardCache(dataset, root) if root is not None else None


def _events(dataset: Dataset, cache, k: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Every event's user id and time (int64) of shard ``k``'s ``kind`` timeline."""
    if cache is not None:
        arrays = cache.get(k)
        offsets = np.asarray(arrays[f"{kind}.offsets"])
        first, _ = dataset.shard_users(k)
        user = np.repeat(np.arange(first, first + offsets.size - 1, dtype=np.int64), np.diff(offsets))
        ts = np.asarray(arrays[f"{kind}.ts"]).astype(np.int64) + int(arrays[f"{kind}.ts_base"][0])
        return user, ts
    cols = dataset.read_table(k, kind, ["user_id", "ts"])
    return cols["user_id"], cols["ts"]
