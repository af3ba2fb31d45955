"""``dv365 refresh``: one idempotent cycle of the recurring job (paper 3.3, appendix B; docs/export.md).

new data -> **train** (warm-started from the previous cycle's model; the first cycle trains cold) -> **export**
(every user at the data's cut-off, into a staged version) -> **publish** (atomic switch, keep the newest K) ->
**report** (per-user cosine similarity of the new version against the previous one, JSON + PNG histogram, and
the new model's NE on held-out data, with the previous model's as baseline).

Each stage writes its result into the state file (``STATE_DIR/refresh.json``, replaced atomically) when it is
complete; a rerun skips finished stages and resumes an unfinished one where it stopped (training from its newest
checkpoint, the export from its finished parts). A cycle is identified by its data (the dataset manifest's hash):
rerunning a finished cycle on the same data does nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Any

from ..files import atomic_write_json

STATE_FILE = "refresh.json"
STAGES = ("train", "export", "publish", "report")


class RefreshError(ValueError):
    """A cycle that cannot run: an unfinished cycle on other data, a config that changed mid-cycle, a snapshot that
    renumbers the previous one's users or items."""


def renumbered(old: str | os.PathLike, new: str | os.PathLike) -> str | None:
    """Why dataset ``new`` does not keep the dense ids of dataset ``old``, or None when it does. Ingest writes the
    raw id of every dense user and item id to ``vocab/users.parquet`` / ``vocab/items.parquet``; the ids of the
    next snapshot must extend those (the same raw id at every old dense id), or the warm start gives items other
    items' table rows and the export publishes users' embeddings under other users' ids. Datasets without these
    files (``dv365 synth``) have no raw ids and pass."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for name in ("users", "items"):
        a, b = Path(old) / "vocab" / f"{name}.parquet", Path(new) / "vocab" / f"{name}.parquet"
        if not (a.is_file() and b.is_file()):
            continue
        ra = pc.cast(pq.read_table(a, columns=["raw"]).column("raw"), pa.string())
        rb = pc.cast(pq.read_table(b, columns=["raw"]).column("raw"), pa.string())
        if len(rb) < len(ra):
            return f"{new} has {len(rb):,} {name}, {old} had {len(ra):,}: a snapshot must keep every earlier one"
        same = pc.fill_null(pc.equal(ra, rb.slice(0, len(ra))), False).to_numpy(zero_copy_only=False)
        moved = (~same).nonzero()[0]
        if moved.size:
            i = int(moved[0])
            return (f"{moved.size:,} of {len(ra):,} {name} have another dense id in {new} than in {old} (e.g. dense "
                    f"id {i} was {ra[i].as_py()!r}, is now {rb[i].as_py()!r})")
    return None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class _State:
    def __init__(self, folder: Path):
        self.path = folder / STATE_FILE
        self.data: dict[str, Any] = {"cycles": []}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError as e:
                raise RefreshError(f"dv365 refresh: state file {self.path} is not valid JSON ({e})") from None

    @property
    def cycles(self) -> list[dict[str, Any]]:
        return self.data["cycles"]

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


def refresh(
    config: str | os.PathLike | None,
    data: str,
    store: str,
    *,
    state_dir: str | os.PathLike | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    keep: int = 3,
    device: str | None = None,
    batch_size: int = 256,
    part_size: int | None = None,
    version_prefix: str = "cycle",
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or finish) the refresh cycle for dataset ``data``; returns the cycle's record from the state file.

    ``config``: the training config (YAML path, as ``dv365 train``; ``overrides`` as its KEY=VALUE arguments).
    ``state_dir`` (default: the config's ``run_dir``) holds ``refresh.json`` and one folder per cycle
    (``cycle-0001/train`` is that cycle's training run, ``cycle-0001/stability.json|png`` its report).
    ``keep``: published versions kept in the store. ``device``: for export and evaluation (default: the config's)."""
    from .. import faults
    from ..export import DEFAULT_PART_SIZE, export
    from ..train import load_config, train
    from ..train.checkpoint import file_hash, latest_checkpoint
    from ..train.trainer import resolve_device

    cfg = load_config(str(config) if config is not None else None, list(overrides))
    root = Path(state_dir) if state_dir is not None else Path(cfg.run_dir)
    data_hash = file_hash(Path(data) / "manifest.json") if (Path(data) / "manifest.json").is_file() else None
    if data_hash is None:
        raise RefreshError(f"dv365 refresh: {data} is not a dataset (no manifest.json)")
    state = _State(root)
    cfg_dict = json.loads(json.dumps(cfg.to_dict()))  # as the state file holds it (tuples as lists)
    last = state.cycles[-1] if state.cycles else None
    if last is not None and last["data_hash"] == data_hash:
        cycle = last
        diff = _diff(cycle["config"], cfg_dict)
        if diff:
            raise RefreshError(f"dv365 refresh: cycle {cycle['cycle']} on {data} ran with another config (differs in: "
                               f"{', '.join(diff)}); refresh with the config it started with")
        if cycle.get("done"):
            return dict(cycle, noop=True)
    elif last is not None and not last.get("done"):
        raise RefreshError(f"dv365 refresh: cycle {last['cycle']} on {last['data']} is unfinished (stages done: "
                           f"{', '.join(s for s in STAGES if s in last['stages']) or 'none'}); rerun with --data "
                           f"{last['data']} to finish it first")
    else:
        done = next((c for c in reversed(state.cycles) if c.get("done")), None)
        why = renumbered(done["data"], data) if done is not None else None
        if why is not None:
            raise RefreshError(f"dv365 refresh: {why}. Ingest the new snapshot so that ids stay: dv365 ingest ... "
                               f"--vocab-from {done['data']} (docs/real-data.md, section 5)")
        n = len(state.cycles) + 1
        cycle = {"cycle": n, "data": str(data), "data_hash": data_hash, "version": f"{version_prefix}-{n:04d}",
                 "dir": str(root / f"cycle-{n:04d}"), "config": cfg_dict, "started": _now(), "stages": {},
                 "done": False}
        state.cycles.append(cycle)
        state.save()
    prev = next((c for c in reversed(state.cycles[:-1]) if c.get("done")), None)
    folder = Path(cycle["dir"])
    stages = cycle["stages"]

    def record(stage: str, result: dict[str, Any]) -> None:
        faults.checkpoint(f"refresh.{stage}")  # the stage's work is done but not yet recorded: the worst moment
        stages[stage] = dict(result, finished=_now())
        state.save()

    # -- train: warm start from the previous cycle's model (paper 3.3), cold for the first cycle ---------------
    if "train" not in stages:
        run_cfg = dataclasses.replace(cfg, run_dir=str(folder / "train"),
                                      data=dataclasses.replace(cfg.data, path=str(data)))
        init_from = prev["stages"]["train"]["checkpoint"] if prev is not None else None
        train(run_cfg, init_from=init_from, resume=True, progress=progress)
        ckpt = latest_checkpoint(run_cfg.run_dir)
        record("train", {"checkpoint": str(ckpt), "hash": file_hash(ckpt), "warm_start_from": init_from})
    ckpt = stages["train"]["checkpoint"]
    dev = device or str(resolve_device(cfg.device))
    opts = {"version": cycle["version"], "batch_size": batch_size, "part_size": part_size or DEFAULT_PART_SIZE,
            "device": dev, "progress_dir": folder / "export-progress", "progress": progress}

    # -- export: every user into the staged version ---------------------------------------------------------------
    if "export" not in stages:
        res = export(ckpt, str(data), store, part=0, parts=1, **opts)
        record("export", {"exported": res.exported, "parts": len(res.parts_written) + len(res.parts_skipped),
                          "seconds": res.seconds})

    # -- publish: one atomic switch; an already published version with the same arguments is a no-op -------------
    if "publish" not in stages:
        res = export(ckpt, str(data), store, publish_only=True, keep=keep, **opts)
        record("publish", {"version": res.version, "users": res.manifest["store"]["users"]})

    # -- report: stability against the previous version, NE on held-out data --------------------------------------
    if "report" not in stages:
        report = _report(cycle, prev, store, ckpt, cfg, dev, folder)
        record("report", report)
    cycle["done"] = True
    cycle["finished"] = _now()
    state.save()
    return dict(cycle, noop=False)


def _report(cycle: dict[str, Any], prev: dict[str, Any] | None, store: str, ckpt: str, cfg, device: str,
            folder: Path) -> dict[str, Any]:
    from ..store import open_store
    from ..train import evaluate_checkpoint
    from ..train.checkpoint import CheckpointError
    from .stability import cosine_similarities, plot_histogram, summarize

    new = cycle["version"]
    report: dict[str, Any] = {"cycle": cycle["cycle"], "version": new, "checkpoint": ckpt, "created": _now(),
                              "previous_version": None, "stability": None, "ne": None}
    out: dict[str, Any] = {"json": str(folder / "stability.json")}
    if prev is None:
        report["stability_skipped"] = "first cycle: no previous version"
    else:
        old = prev["version"]
        report["previous_version"] = old
        with open_store(store) as st:
            published = {v.name for v in st.versions() if v.state == "published"}
            if old not in published:
                report["stability_skipped"] = f"previous version {old!r} is no longer in the store (gc)"
            else:
                try:
                    sims, counts = cosine_similarities(st, old, new)
                except ValueError as e:
                    report["stability_skipped"] = str(e)
                else:
                    report["stability"] = dict(summarize(sims), **counts)
        if report["stability"] is not None:
            png = folder / "stability.png"
            plot_histogram(report["stability"], png, f"embedding stability: {old} -> {new}")
            out["png"] = str(png)
            out["mean_cosine"] = report["stability"].get("mean")
    if cfg.data.eval_path:
        baseline = prev["stages"]["train"]["checkpoint"] if prev is not None else None
        try:
            report["ne"] = evaluate_checkpoint(ckpt, cfg.data.eval_path, baseline=baseline, device=device)
        except CheckpointError as e:  # the previous model's tables may not cover the held-out data's ids
            report["ne"] = evaluate_checkpoint(ckpt, cfg.data.eval_path, device=device)
            report["ne"]["baseline_skipped"] = str(e)
    else:
        report["ne_skipped"] = "the config has no data.eval_path"
    atomic_write_json(folder / "stability.json", report)
    return out


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ. Values compare as JSON text: NaN (``data.fill_missing: .nan``) equals
    NaN, which ``!=`` between two float objects does not say."""
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{k}.")
        elif json.dumps(x, sort_keys=True) != json.dumps(y, sort_keys=True):
            out.append(f"{prefix}{k}")
    return out
