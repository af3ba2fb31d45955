"""Fault injection for crash tests: ``DV365_FAULT=<point>:<n>`` makes the process SIGKILL itself the n-th time
it reaches ``<point>`` (e.g. ``train.step:12``), so tests can kill a real job at an exact place and check that it
resumes without losing or duplicating work. Unset (always, outside tests) it costs one dict lookup."""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("DV365_FAULT")
    if not spec:
        return None
    point, _, n = spec.rpartition(":")
    return (point, int(n)) if point and n.isdigit() else (spec, 1)


def checkpoint(point: str) -> None:
    """Die here (SIGKILL, no cleanup, as a crash or an OOM kill would) if the environment asks for it."""
    target = _target()
    if target is None or target[0] != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
