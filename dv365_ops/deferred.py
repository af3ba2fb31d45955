"""Deferred data checks: CUDA ops that report bad input later instead of synchronising on every call.

Whether a call's input was bad (an id beyond its table, offsets that decrease, a timestamp after the request) is
learned on the device, and raising it at the call means reading it back: one device synchronization per call.
In a training step that stalls the host's launch queue several times per step (the pooling forward, its backward,
the jagged pools), so the GPU idles while the host catches up. In deferred mode the ops skip that read: their
kernels report into a flag kept per op and device, and :func:`check_deferred` reads all of them in one copy, where
the caller synchronises anyway (``dv365 train`` checks at every log step and at the end). The kernels never read
out of bounds on bad input in either mode (they skip the offending element), so what deferred mode gives up is
only *when* and *how precisely* an error is reported: the message names the op and what was wrong, not the call
or the offending index (rerun without deferral for those). Bad input inside a captured CUDA graph, which can
never be read at the call, is reported this way too when the ops ran once in deferred mode before the capture.

CPU kernels raise at the call in either mode (a CPU check costs no synchronization), and so does the Triton
backend, whose slicing ops read their inputs' longest history back for the launch anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from . import _C


def set_deferred_checks(enabled: bool) -> bool:
    """Turn deferred mode on or off for this process; returns the previous mode."""
    return bool(_C._set_deferred_checks(bool(enabled)))


def deferred_checks_enabled() -> bool:
    return bool(_C._deferred_checks_enabled())


def check_deferred() -> None:
    """Raise ``RuntimeError`` naming every op that received bad input since the last check (one device read per
    device); a no-op when nothing was flagged. The flags are cleared by the read."""
    _C._check_deferred()


@contextlib.contextmanager
def deferred_checks(enabled: bool = True, check_on_exit: bool = True) -> Iterator[None]:
    """Deferred mode inside the block (restored after); on a normal exit the block's flags are checked."""
    previous = set_deferred_checks(enabled)
    try:
        yield
        if check_on_exit and enabled:
            check_deferred()
    finally:
        set_deferred_checks(previous)


__all__ = ["check_deferred", "deferred_checks", "deferred_checks_enabled", "set_deferred_checks"]
