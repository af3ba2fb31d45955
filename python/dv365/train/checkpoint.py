"""Checkpoints: one file per step, written atomically, holding everything an exact resume needs.

A checkpoint is ``run_dir/checkpoints/step-00000100.pt``: the model, both optimizers, the loader position, every
rank's RNG states, the step, the loss history, the config, the spec (and its hash) and the vocabulary sizes the
tables were built for. It is written to a temporary file in the same folder, fsynced and renamed into place, so a
kill at any moment leaves either the previous set of checkpoints or the new one, never a torn file. The newest
complete file is found by name, so no separate "latest" pointer can disagree with the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import faults

FORMAT = "dv365-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d{8})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the data / spec / model it is used with."""


def spec_hash(spec_dict: dict[str, Any]) -> str:
    """A stable hash of a slice spec's canonical form (tables, slices, dim; not the table capacities)."""
    canon = dict(spec_dict)
    canon["tables"] = {k: {f: v for f, v in t.items() if f != "num_rows"} for k, t in spec_dict["tables"].items()}
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:16]


def file_hash(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: str | os.PathLike, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically, then drop all but the newest ``keep``."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.pt"
    tmp = folder / f".{path.name}.tmp-{os.getpid()}"
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, **state}
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    faults.checkpoint("checkpoint.before_rename")
    os.replace(tmp, path)
    _fsync_dir(folder)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    for stale in folder.glob(".step-*.tmp-*"):  # left by a killed writer
        if stale != tmp:
            stale.unlink(missing_ok=True)
    return path


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file, or the newest checkpoint of a run folder."""
    p = Path(path)
    if p.is_dir():
        found = latest_checkpoint(p)
        if found is None:
            raise CheckpointError(f"{p} holds no checkpoint (expected {checkpoint_dir(p)}/step-*.pt)")
        p = found
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        # the checkpoint holds numpy / python RNG states besides tensors: only load files you trust
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"checkpoint {p} is not readable: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a dv365 checkpoint")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{p} has checkpoint format {ckpt.get('format_version')}, this dv365 reads {FORMAT_VERSION}")
    ckpt["path"] = str(p)
    return ckpt
