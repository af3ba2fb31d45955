"""``dv365 export``: the user tower η over every user of a snapshot, int4 rows, one published store version
(paper 2.4; the record layout is ``dv365_ops.int4_quantize``'s, 136 bytes per 256-d row).

The users ``[0, num_users)`` are cut into *parts* of ``part_size`` consecutive ids, the unit of work, of resume and
of the store's checksums. A part is computed whole and written with one ``write_part`` call, then recorded in a
progress file (atomic replace); a rerun after a kill skips the recorded parts and recomputes the one that was in
flight, whose ``write_part`` replaces anything it had written. No user is exported twice or missed, and the
published version is the same as an uninterrupted run's.

Workers (``part=K, parts=P``, or the ranks of ``torchrun``) each take a contiguous block of the parts; one
``publish`` step (``publish_only``, or rank 0 under ``torchrun``) verifies every part in the store and switches
the store's current version atomically. A failed export (a kill, a full disk) never touches the current version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_write_json

FORMAT = "dv365-embeddings"
FORMAT_VERSION = 1
DEFAULT_PART_SIZE = 8192  # 8192 users x 58 x 136 B = 65 MB of records held per part at D = 256
_CARRY_CHUNK = 4096


class ExportError(ValueError):
    """An export that cannot run as asked: bad arguments, a checkpoint that does not fit the data, a version
    that exists with other content, an incremental base that does not match."""


@dataclasses.dataclass
class ExportResult:
    version: str
    published: bool  # the version is published (by this call or, for an idempotent rerun, before it)
    already_published: bool  # nothing to do: the same export was published before
    exported: int  # users this call ran through the user tower
    carried: int  # users this call copied from the --since version
    parts_written: list[int]
    parts_skipped: list[int]  # finished by an earlier run (resume) or by other workers
    seconds: float
    manifest: dict[str, Any] | None
    timings: dict[str, float]

    @property
    def users_per_s(self) -> float:
        return (self.exported + self.carried) / max(self.seconds, 1e-9)


def resolve_cutoff(dataset, cutoff: int | str) -> int:
    """``cutoff`` in seconds, or ``"auto"``: one second after the dataset's latest event or request time."""
    if cutoff == "auto":
        hi = dataset.manifest.get("time_range", {}).get("max_ts")
        if hi is None:
            raise ExportError(f"dv365 export: --cutoff auto: {dataset.path} holds no events")
        return int(hi) + 1
    try:
        return int(cutoff)
    except (TypeError, ValueError):
        raise ExportError(f"dv365 export: --cutoff must be seconds since the epoch or 'auto', got {cutoff!r}") from None


def part_bounds(num_users: int, part_size: int) -> list[tuple[int, int]]:
    n = max(1, math.ceil(num_users / part_size))
    return [(k * part_size, min(num_users, (k + 1) * part_size)) for k in range(n)]


def worker_parts(num_parts: int, worker: int, workers: int) -> range:
    """Worker ``worker`` of ``workers`` takes the contiguous block ``[K n / P, (K + 1) n / P)`` of the parts."""
    return range(worker * num_parts // workers, (worker + 1) * num_parts // workers)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def default_version_name(cutoff: int, plan: dict[str, Any]) -> str:
    """``<cut-off as UTC>-<plan digest>``: a rerun with the same arguments finds its own version again."""
    stamp = datetime.datetime.fromtimestamp(cutoff, datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{_digest(plan)[:8]}"


class _Progress:
    """The parts this process finished, in a JSON file replaced atomically after every part.

    Keyed by store and version; it holds the plan too, so a rerun with other arguments is refused instead of
    mixing parts of two exports."""

    def __init__(self, folder: Path, store_url: str, version: str, plan: dict[str, Any], worker: str):
        self.path = folder / f"{_digest([store_url, version])}-{worker}.json"
        self.plan = plan
        self.parts: dict[int, dict[str, Any]] = {}
        if self.path.exists():
            try:
                state = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                state = None  # unreadable: redo this worker's parts, write_part replaces them
            if state is not None:
                if state.get("plan") != plan:
                    old = state.get("plan") or {}
                    diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
                    raise ExportError(
                        f"dv365 export: version {version!r} of {store_url} was started by an export with other "
                        f"arguments (differs in: {', '.join(diff)}); rerun it with the same arguments, or pass "
                        f"another --version (progress file {self.path})")
                self.parts = {int(k): v for k, v in state.get("parts", {}).items()}

    def done(self, part: int, info: dict[str, Any]) -> None:
        self.parts[part] = info
        atomic_write_json(self.path, {"plan": self.plan, "parts": {str(k): v for k, v in self.parts.items()}}, sort_keys=True)

    def forget(self) -> None:
        self.parts = {}
        self.path.unlink(missing_ok=True)


class _Timer:
    """Seconds per stage. ``sync`` synchronizes the device at each stage boundary (an exact split, no overlap);
    without it only the host-side waits are split. On CUDA, events around each batch's compute give the GPU's
    busy time."""

    def __init__(self, device: torch.device, sync: bool):
        self.device, self.sync = device, sync
        self.seconds: dict[str, float] = {}
        self.events: list[tuple[Any, Any]] = []

    @contextlib.contextmanager
    def stage(self, name: str):
        if self.sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.sync and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

    def gpu_busy_seconds(self) -> float | None:
        if self.device.type != "cuda" or not self.events:
            return None
        torch.cuda.synchronize(self.device)
        return sum(a.elapsed_time(b) for a, b in self.events) / 1000.0


def _autocast(mode: str, device: torch.device):
    if mode == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _resolve_autocast(mode: str | None, train_mode: str, device: torch.device) -> str:
    mode = train_mode if mode is None else mode
    if mode not in ("auto", "bf16", "off"):
        raise ExportError(f"dv365 export: --autocast must be auto, bf16 or off, got {mode!r}")
    if mode == "auto":
        return "bf16" if device.type == "cuda" else "off"
    return mode


def _torchrun_worker() -> tuple[int, int] | None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ["RANK"]), world) if world > 1 else None


def export(
    checkpoint: str,
    data: str,
    store: Any,
    *,
    cutoff: int | str = "auto",
    version: str | None = None,
    batch_size: int = 256,
    half_scale_bias: bool = False,
    since: str | None = None,
    part: int | None = None,
    parts: int | None = None,
    publish_only: bool = False,
    keep: int | None = None,
    device: str = "cpu",
    autocast: str | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    progress_dir: str | os.PathLike | None = None,
    progress: bool = True,
    profile: bool = False,
    workers: int | None = None,
) -> ExportResult:
    """Export every user of dataset ``data`` at ``cutoff`` with the user tower of ``checkpoint`` into ``store``
    (a URL / directory for :func:`dv365.store.open_store`, or an open store) as version ``version`` (default: a
    name from the cut-off and the export's arguments), and publish it. See the module docstring.

    ``since``: carry every user whose embedding cannot have changed over from that published version (same
    checkpoint), recompute the rest (:mod:`dv365.export.incremental`). ``part``/``parts``: export only worker
    ``part``'s block of the parts and do not publish (``torchrun`` sets them from its ranks and publishes from
    rank 0); ``publish_only``: verify and publish what the workers wrote. ``keep``: after publishing, keep only
    the newest ``keep`` published versions. ``autocast``: ``bf16``, ``off`` or ``auto`` (bf16 on CUDA; default:
    the training config's). ``progress_dir``: where the per-worker progress files live (default
    ``~/.cache/dv365/export``). ``profile``: synchronize the device per stage for an exact time split. ``workers``: the loader's worker processes (threads where processes are not available)."""
    t_start = time.perf_counter()
    from .. import faults
    from ..data import UserLoader, open_dataset
    from ..spec import SliceSpec
    from ..store import open_store
    from ..train.checkpoint import file_hash
    from ..train.evaluate import check_data_fits, load_model
    from ..train.trainer import resolve_device

    if batch_size < 1:
        raise ExportError(f"dv365 export: --batch-size must be >= 1, got {batch_size}")
    if part_size < 1:
        raise ExportError(f"dv365 export: --part-size must be >= 1, got {part_size}")
    if keep is not None and keep < 1:
        raise ExportError(f"dv365 export: --keep must be >= 1, got {keep}")
    distributed = None
    if (part is None) != (parts is None):
        raise ExportError("dv365 export: --part and --parts go together (worker K of P)")
    if part is None and not publish_only:
        distributed = _torchrun_worker()
        if distributed is not None:
            part, parts = distributed
    if parts is not None and not (parts >= 1 and 0 <= part < parts):
        raise ExportError(f"dv365 export: --part must be in [0, --parts), got --part {part} --parts {parts}")
    if publish_only and part is not None:
        raise ExportError("dv365 export: --publish-only publishes what every worker wrote; leave out --part/--parts")

    dev = resolve_device(device)
    if distributed is not None and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per rank
    dataset = open_dataset(data)
    model, cfg, ckpt = load_model(checkpoint, dev)
    check_data_fits(ckpt["vocab_sizes"], ckpt["path"], dataset, "dv365 export")
    ckpt_hash = file_hash(ckpt["path"])
    cut = resolve_cutoff(dataset, cutoff)
    gap = int(cfg.data.gap)
    amp = _resolve_autocast(autocast, cfg.autocast, dev)
    num_tokens, dim = int(model.tower.num_out), int(model.tower.dim)
    row_bytes = dim // 2 + (4 if half_scale_bias else 8)
    bounds = part_bounds(dataset.num_users, part_size)
    plan = {
        "checkpoint_hash": ckpt_hash, "data_manifest_hash": file_hash(dataset.path / "manifest.json"),
        "num_users": dataset.num_users, "cutoff": cut, "gap": gap, "max_events": cfg.data.max_events,
        "fill_missing": cfg.data.fill_missing, "half_scale_bias": bool(half_scale_bias), "part_size": part_size,
        "num_parts": len(bounds), "since": since, "autocast": amp,
    }
    version = version or default_version_name(cut, plan)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "plan_digest": _digest(plan),
        "checkpoint": {"path": str(ckpt["path"]), "hash": ckpt_hash, "step": int(ckpt["step"])},
        "data": {"path": str(dataset.path), "manifest_hash": plan["data_manifest_hash"], "num_users": dataset.num_users,
                 "counts": dataset.counts, "time_range": dataset.manifest.get("time_range")},
        "cutoff": cut, "gap": gap, "request_ts": cut + gap, "max_events": cfg.data.max_events,
        "fill_missing": cfg.data.fill_missing, "spec_hash": ckpt["spec_hash"], "tower": cfg.model.tower.name,
        "num_tokens": num_tokens, "dim": dim, "half_scale_bias": bool(half_scale_bias),
        "record": {"codec": "int4 rowwise (dv365_ops.int4_quantize)", "scale_bias": "fp16" if half_scale_bias else "fp32",
                   "bytes_per_row": row_bytes, "rows": num_tokens, "bytes_per_user": row_bytes * num_tokens},
        "users": dataset.num_users, "part_size": part_size,
        "parts": {str(k): [lo, hi] for k, (lo, hi) in enumerate(bounds)},
        "incremental": None, "autocast": amp, "device": dev.type,
    }

    own = not hasattr(store, "stage")
    with contextlib.ExitStack() as stack:
        group = None
        if distributed is not None:
            from ..train.distributed import barrier, init_distributed, shutdown

            group = init_distributed(torch.device("cpu"))
            stack.callback(shutdown, group)
            if not group.is_main:
                barrier(group)  # rank 0 opens (creates) the store first: concurrent creation would race
        st = open_store(str(store), create=True) if own else store
        if own:
            stack.callback(st.close)
        if group is not None and group.is_main:
            barrier(group)
        url = getattr(st, "url", str(store))
        published = {v.name: v for v in st.versions() if v.state == "published"}
        if version in published:
            old = st.manifest(version)
            if old.get("plan_digest") == manifest["plan_digest"]:
                return ExportResult(version, True, True, 0, 0, [], list(range(len(bounds))),
                                    time.perf_counter() - t_start, old, {})
            raise ExportError(f"dv365 export: version {version!r} is already published in {url} by another export "
                              f"(checkpoint {old.get('checkpoint', {}).get('hash')}, cut-off {old.get('cutoff')}); "
                              "published versions are immutable: choose another --version")

        base = None
        reexport = None
        if since is not None:
            if since not in published:
                known = ", ".join(published) or "none"
                raise ExportError(f"dv365 export: --since {since!r} is not a published version of {url} (published: {known})")
            base = st.manifest(since)
            _check_base(base, since, manifest, ckpt_hash)
            manifest["incremental"] = {"since": since, "since_cutoff": base["cutoff"]}
            if not publish_only:
                from .incremental import users_to_reexport

                reexport = users_to_reexport(dataset, SliceSpec.from_dict(ckpt["spec"]), int(base["cutoff"]), cut, gap,
                                             progress=progress)

        if publish_only:
            _check_staged(st, version, dataset.num_users, len(bounds))
            _publish(st, version, manifest, len(bounds), keep)
            return ExportResult(version, True, False, 0, 0, [], list(range(len(bounds))), time.perf_counter() - t_start,
                                st.manifest(version), {})

        worker = "all" if parts is None else f"{part}-of-{parts}"
        mine = range(len(bounds)) if parts is None else worker_parts(len(bounds), part, parts)
        folder = Path(progress_dir) if progress_dir is not None else Path.home() / ".cache" / "dv365" / "export"
        state = _Progress(folder, url, version, plan, worker)
        staged = {v.name: v for v in st.versions() if v.state == "staged"}
        if state.parts and version not in staged:
            state.forget()  # the staged version is gone (gc of an abandoned export): its parts must be redone
        w = st.stage(version)
        todo = [k for k in mine if k not in state.parts]
        skipped = [k for k in mine if k in state.parts]

        timer = _Timer(dev, profile)
        exported = carried = 0
        written: list[int] = []
        base_users = int(base["users"]) if base is not None else 0
        bar = None
        if progress:
            from tqdm import tqdm

            if reexport is None:
                total = sum(bounds[k][1] - bounds[k][0] for k in todo)
            else:
                total = sum(_eta_ids(reexport, base_users, *bounds[k]).size for k in todo)
            bar = tqdm(total=total, desc=f"export {version}", unit="user", dynamic_ncols=True, smoothing=0.1)

        t_loop = time.perf_counter()
        loader = None
        try:
            for run in _runs(todo):
                lo, hi = bounds[run[0]][0], bounds[run[-1]][1]
                only = None
                if reexport is not None:
                    only = np.concatenate([_eta_ids(reexport, base_users, *bounds[k]) for k in run])
                loader = UserLoader(dataset, batch_size, cut, gap, users=(lo, hi), only_users=only,
                                    max_events=cfg.data.max_events, fill_missing=cfg.data.fill_missing,
                                    pin_memory=dev.type == "cuda", workers=workers)
                pending: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in run}
                queue = iter(run)
                current = next(queue)

                def flush(k: int) -> None:
                    nonlocal carried
                    ids = np.concatenate([a for a, _ in pending[k]]) if pending[k] else np.empty(0, np.int64)
                    recs = (np.concatenate([r for _, r in pending[k]]) if pending[k]
                            else np.empty((0, num_tokens, row_bytes), np.uint8))
                    with timer.stage("store"):
                        if base is not None:
                            c_ids, c_recs = _carry(st, since, bounds[k], ids, num_tokens, row_bytes)
                            carried += c_ids.size
                            ids, recs = np.concatenate([ids, c_ids]), np.concatenate([recs, c_recs])
                            order = np.argsort(ids, kind="stable")
                            ids, recs = ids[order], recs[order]
                        _check_part_users(k, ids, bounds[k])
                        info = w.write_part(k, torch.from_numpy(ids), torch.from_numpy(recs))
                    state.done(k, {"count": info.count, "checksum": info.checksum})
                    faults.checkpoint("export.part")
                    written.append(k)
                    pending[k] = []

                for ub, emb_host in _embed_batches(model, loader, dev, amp, half_scale_bias, timer, num_tokens, row_bytes):
                    exported += ub.size
                    n_batch = int(ub.size)
                    # a batch may straddle part ends: split it by user id
                    while True:
                        end = bounds[current][1]
                        cut_at = int(np.searchsorted(ub, end))
                        if cut_at:
                            pending[current].append((ub[:cut_at], emb_host[:cut_at]))
                        ub, emb_host = ub[cut_at:], emb_host[cut_at:]
                        if ub.size == 0:
                            break
                        flush(current)
                        current = next(queue)
                    if bar is not None:
                        bar.set_postfix(parts=f"{len(written)}/{len(todo)}", refresh=False)
                        bar.update(n_batch)
                    faults.checkpoint("export.batch")
                flush(current)
                for k in queue:
                    flush(k)
                loader.close()  # its worker processes: the next run starts its own
        finally:
            if loader is not None:
                loader.close()
            if bar is not None:
                bar.set_postfix(parts=f"{len(written)}/{len(todo)}", refresh=False)
                bar.close()

        seconds = time.perf_counter() - t_start
        timings = dict(timer.seconds, loop=time.perf_counter() - t_loop)
        busy = timer.gpu_busy_seconds()
        if busy is not None:
            timings["gpu_busy"] = busy
        result = ExportResult(version, False, False, exported, carried, written, skipped, seconds, None, timings)
        if group is not None:
            barrier(group)  # every rank's parts are written
            if group.is_main:
                result.manifest = _publish(st, version, manifest, len(bounds), keep)
                result.published = True
            barrier(group)
        elif parts is None:
            result.manifest = _publish(st, version, manifest, len(bounds), keep)
            result.published = True
        result.seconds = time.perf_counter() - t_start
        return result




def _runs(todo: list[int]) -> list[list[int]]:
    """Consecutive part numbers grouped, so that one loader streams each run of unfinished parts."""
    runs: list[list[int]] = []
    for k in todo:
        if runs and runs[-1][-1] == k - 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def _eta_ids(reexport: np.ndarray, base_users: int, lo: int, hi: int) -> np.ndarray:
    """Users of ``[lo, hi)`` to recompute in an incremental export: the changed ones and those the base lacks."""
    a, b = np.searchsorted(reexport, [lo, hi])
    new = np.arange(max(lo, base_users), hi, dtype=np.int64)
    return np.union1d(reexport[a:b], new).astype(np.int64)


def _check_part_users(part: int, ids: np.ndarray, bounds: tuple[int, int]) -> None:
    lo, hi = bounds
    if ids.size != hi - lo or (ids.size and (ids[0] != lo or ids[-1] != hi - 1)):
        # an internal invariant: a part holds exactly its user range, once each
        raise RuntimeError(f"dv365 export: part {part} would hold {ids.size} users for the range [{lo}, {hi})")


def _carry(st, since: str, bounds: tuple[int, int], computed: np.ndarray, num_tokens: int, row_bytes: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """The records of ``since`` for the users of ``bounds`` not in ``computed``."""
    lo, hi = bounds
    ids = np.setdiff1d(np.arange(lo, hi, dtype=np.int64), computed, assume_unique=True)
    out = np.empty((ids.size, num_tokens, row_bytes), dtype=np.uint8)
    for i in range(0, ids.size, _CARRY_CHUNK):
        chunk = ids[i:i + _CARRY_CHUNK]
        res = st.get(torch.from_numpy(chunk), version=since)
        found = res.found.numpy()
        if not found.all():
            bad = chunk[~found][:10].tolist()
            raise ExportError(f"dv365 export: --since {since!r} has no readable record for users {bad} (missing or "
                              "corrupted, see `dv365 store verify`); run a full export")
        out[i:i + chunk.size] = res.records.reshape(chunk.size, -1).view(torch.uint8).reshape(
            chunk.size, num_tokens, row_bytes).numpy()
    return ids, out


def _check_base(base: dict[str, Any], since: str, manifest: dict[str, Any], ckpt_hash: str) -> None:
    """An incremental export needs a base made by the same model with the same record format."""
    where = f"dv365 export: --since {since!r}"
    if base.get("format") != FORMAT:
        raise ExportError(f"{where} was not written by dv365 export (format {base.get('format')!r})")
    if base["checkpoint"]["hash"] != ckpt_hash:
        raise ExportError(f"{where} was exported from another checkpoint ({base['checkpoint']['path']}, hash "
                          f"{base['checkpoint']['hash']}, this one {ckpt_hash}): its records are not this model's; "
                          "run a full export (leave out --since)")
    for key in ("gap", "max_events", "fill_missing", "half_scale_bias", "num_tokens", "dim", "autocast"):
        if base.get(key) != manifest[key]:
            raise ExportError(f"{where} has {key} = {base.get(key)!r}, this export {manifest[key]!r}; "
                              "run a full export (leave out --since)")
    if manifest["cutoff"] < base["cutoff"]:
        raise ExportError(f"{where} has cut-off {base['cutoff']}, later than this export's {manifest['cutoff']}")
    if manifest["users"] < base["users"]:
        raise ExportError(f"{where} has {base['users']} users, the data only {manifest['users']}: the new snapshot "
                          "must extend the old one; run a full export")


def _check_staged(st, version: str, users: int, num_parts: int) -> None:
    """Before a ``--publish-only``: the staged parts must be this export's (its user count and part count)."""
    staged = {v.name: v for v in st.versions() if v.state == "staged"}
    info = staged.get(version)
    if info is None:
        raise ExportError(f"dv365 export: --publish-only: version {version!r} is not staged in {st.url} (run the "
                          "workers first, with the same --version)")
    if info.parts == num_parts and info.users != users:
        raise ExportError(f"dv365 export: --publish-only: the {info.parts} staged parts of {version!r} hold "
                          f"{info.users} users, this export's data has {users}: were the workers given other "
                          "--data or --part-size?")


def _publish(st, version: str, manifest: dict[str, Any], num_parts: int, keep: int | None) -> dict[str, Any]:
    manifest = dict(manifest, created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    stored = st.publish(version, manifest, parts=list(range(num_parts)))
    if keep is not None and sum(v.state == "published" for v in st.versions()) > keep:
        st.gc(keep)
    return stored


def _embed_batches(model, loader, dev: torch.device, amp: str, half_scale_bias: bool, timer: _Timer,
                   num_tokens: int, row_bytes: int):
    """Yields ``(user_ids int64 [B], records uint8 [B, N_out, row_bytes])`` per loader batch.

    On CUDA the copy of a batch's codes back to the host overlaps the next batch's compute (one batch in flight)."""
    import dv365_ops

    cuda = dev.type == "cuda"
    in_flight: list[tuple[np.ndarray, torch.Tensor, Any]] = []
    it = iter(loader)
    with torch.inference_mode():
        while True:
            with timer.stage("load"):
                batch = next(it, None)
            if batch is None:
                break
            users = batch.user_id.numpy()
            with timer.stage("h2d"):
                batch = batch.to(dev, non_blocking=True)
            start = torch.cuda.Event(enable_timing=True) if cuda else None
            if start is not None:
                start.record()
            with _autocast(amp, dev):
                with timer.stage("pool"):
                    pooled = model.pooling(batch.explicit, batch.implicit, batch.request_ts)
                with timer.stage("tower"):
                    emb = model.tower(pooled)
            with timer.stage("quantize"):
                codes = dv365_ops.int4_quantize(emb.reshape(-1, emb.shape[-1]).contiguous(),
                                                half_scale_bias=half_scale_bias)
                codes = codes.view(len(users), num_tokens, row_bytes)
                if cuda:
                    end = torch.cuda.Event(enable_timing=True)
                    end.record()
                    timer.events.append((start, end))
                    host = torch.empty(codes.shape, dtype=torch.uint8, pin_memory=True)
                    host.copy_(codes, non_blocking=True)
                    done = torch.cuda.Event()
                    done.record()
                else:
                    host, done = codes, None
            in_flight.append((users, host, done))
            if len(in_flight) > 1 or not cuda:
                yield _finish(in_flight.pop(0), timer)
        while in_flight:
            yield _finish(in_flight.pop(0), timer)


def _finish(item, timer: _Timer) -> tuple[np.ndarray, np.ndarray]:
    users, host, done = item
    if done is not None:
        with timer.stage("d2h_wait"):
            done.synchronize()
    return users, host.numpy()
