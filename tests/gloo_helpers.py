"""Real processes joined in a gloo group, for the tests of what crosses ranks (metric sync, sparse gradients)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch.multiprocessing as mp


def run_gloo_processes(worker: Callable, tmp_path: Path, what: str, nprocs: int = 2, timeout: float = 60) -> None:
    """``worker(rank, nprocs, init_file, out_dir)`` in ``nprocs`` spawned processes (``init_file`` for a
    ``file://`` rendezvous, ``out_dir`` = ``tmp_path`` for their results); fails the test when one fails or when
    they have not all finished within ``timeout`` seconds (then kills them)."""
    ctx = mp.start_processes(worker, args=(nprocs, str(tmp_path / "init"), str(tmp_path)), nprocs=nprocs,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not finish in {timeout:g} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
