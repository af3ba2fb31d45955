"""Worker processes for the loaders: batches built in forked processes, straight into shared memory.

Threads copying batches stop scaling at a few cores on a 16-core host (the GIL hand-offs between copies, and one
address space whose page tables every thread's faults and unmaps serialize on), and their Python work takes the GIL
from the consumer (a training step dispatching kernels), so :class:`~dv365.data.Loader` and
:class:`~dv365.data.UserLoader` build their batches in processes instead. The parent plans every batch (which shard rows, how many bytes) and
owns the memory; a worker only copies rows into it:

- **Arenas.** Each batch is written into one *arena*: a ``memfd`` (anonymous shared memory with no name under
  ``/dev/shm``, so nothing can leak when a process dies) that the parent maps and the workers open through
  ``/proc/<parent>/fd``. An arena is reused once every tensor of the batch that used it is gone (only the pool
  references it), like the thread loader's arenas; it is replaced when a batch needs more bytes. With
  ``pin_memory`` the parent registers each arena with CUDA (page-locked, so ``.to("cuda", non_blocking=True)``
  is a DMA) and reuses one only after the work queued on the consumer's current CUDA stream when it was dropped
  (where its copies of that batch are) is done: an event, recorded then and queried, not a synchronisation.
- **Order.** Batch ``i`` goes to worker ``i % workers`` and is received in order, so the batches are identical to
  the thread loader's, in the same order, and resume and user-range sharding stay exact.
- **Failures.** A worker's exception comes back as an error naming the worker and the batch; a worker that dies
  (killed, out of memory) is seen through its process sentinel, never waited on forever. Workers die with the
  parent (``PR_SET_PDEATHSIG``), ignore ``SIGINT`` (the parent's ``KeyboardInterrupt`` shuts them down), and the
  pool is terminated whenever an iteration ends abnormally.

Workers are forked (Linux): they inherit the opened dataset and never touch torch or CUDA, only numpy.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import traceback
import warnings
import weakref
from typing import Any

import numpy as np

_ALIGN = 64


def layout(shapes: list[tuple[tuple[int, ...], np.dtype]]) -> tuple[list[int], int]:
    """Byte offsets of ``shapes`` packed one after the other, each 64-byte aligned, and the total size."""
    pos, out = 0, []
    for shape, dtype in shapes:
        out.append(pos)
        pos += -(-math.prod(shape) * np.dtype(dtype).itemsize // _ALIGN) * _ALIGN
    return out, pos


def carve(buf: np.ndarray, shapes: list[tuple[tuple[int, ...], np.dtype]]) -> list[np.ndarray]:
    """Views of ``buf`` (uint8) with ``shapes`` at the offsets of :func:`layout`."""
    offsets, _ = layout(shapes)
    return [buf[o : o + math.prod(shape) * np.dtype(dt).itemsize].view(dt).reshape(shape)
            for o, (shape, dt) in zip(offsets, shapes)]


def available() -> bool:
    """Whether worker processes can be used here: Linux (fork, memfd) and not inside a daemonic process."""
    return sys.platform.startswith("linux") and hasattr(os, "memfd_create") and not mp.current_process().daemon


def _map(fd: int, nbytes: int) -> mmap.mmap:
    """A shared mapping of an arena, with huge pages asked for (fewer page faults and TLB misses for copies of tens of
    MB; numpy already asks for them for the thread loader's private arenas). The kernel grants them to shared memory only
    where ``/sys/kernel/mm/transparent_hugepage/shmem_enabled`` allows; elsewhere the advice is ignored."""
    mm = mmap.mmap(fd, nbytes)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            mm.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    return mm


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _worker_main(index: int, conn, ppid: int, make_state, fill) -> None:
    """Worker loop: ``(seq, arena, fd, generation, nbytes, task)`` in, ``(seq, error or None)`` out. ``make_state()``
    builds the worker's own shard readers; ``fill(state, task, buf)`` writes one batch into ``buf``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    code = 0
    try:
        if os.getppid() != ppid:  # the parent died before the death signal was armed
            return
        state = make_state()
        maps: dict[int, tuple[int, np.ndarray]] = {}
        while True:
            msg = conn.recv()
            if msg is None:
                break
            seq, arena, fd, gen, nbytes, task = msg
            try:
                entry = maps.get(arena)
                if entry is None or entry[0] != gen:
                    maps.pop(arena, None)
                    f = os.open(f"/proc/{ppid}/fd/{fd}", os.O_RDWR)
                    try:
                        buf = np.frombuffer(_map(f, nbytes), dtype=np.uint8)
                    finally:
                        os.close(f)
                    entry = maps[arena] = (gen, buf)
                fill(state, task, entry[1])
                conn.send((seq, None))
            except Exception:
                conn.send((seq, traceback.format_exc()))
    except (EOFError, OSError, KeyboardInterrupt):
        code = 0
    except BaseException:  # noqa: BLE001 - a worker must exit, never return into the parent's code
        code = 1
    finally:
        os._exit(code)  # no interpreter teardown: the forked copy of the parent's objects is not ours to finalize


class _Arena:
    __slots__ = ("fd", "gen", "nbytes", "busy", "used", "pinned", "idle", "fence")

    def __init__(self, fd: int, gen: int, nbytes: int):
        self.fd, self.gen, self.nbytes, self.idle, self.fence = fd, gen, nbytes, 0, None
        self.busy = self.used = self.pinned = False


def _unregister(ptr: int) -> None:
    try:
        import torch

        torch.cuda.cudart().cudaHostUnregister(ptr)
    except Exception:  # noqa: BLE001 - interpreter shutdown or CUDA gone: the mapping goes with the process
        pass


class ProcessPool:
    """``workers`` forked processes and the shared arenas they write batches into (module docstring)."""

    def __init__(self, workers: int, make_state, fill, who: str, pin: bool = False, keep: int | None = None):
        self.who, self.pin = who, pin
        self.keep = workers + 6 if keep is None else keep  # arenas kept; more only while the consumer holds batches
        self.arenas: list[_Arena] = []
        self.bufs: list[np.ndarray] = []  # the parent's mapping of each arena
        self._gen, self._warned = 0, False
        self.procs: list[mp.process.BaseProcess] = []
        self.conns: list[Any] = []
        self.closed = False
        ctx = mp.get_context("fork")
        with warnings.catch_warnings():
            # Python warns about forking a multi-threaded process: the workers run only numpy code of ours
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                for i in range(workers):
                    parent, child = ctx.Pipe(duplex=True)
                    p = ctx.Process(target=_worker_main, args=(i, child, os.getpid(), make_state, fill),
                                    name=f"dv365-loader-{i}", daemon=True)
                    p.start()
                    child.close()
                    self.procs.append(p)
                    self.conns.append(parent)
            except BaseException:
                self.close()
                raise
        self._finalizer = weakref.finalize(self, ProcessPool._terminate, list(self.procs), list(self.conns))

    def __len__(self) -> int:
        return len(self.procs)

    # arenas ------------------------------------------------------------------------------------
    def _new_arena(self, nbytes: int) -> tuple[_Arena, np.ndarray]:
        nbytes = max(_ALIGN, -(-(nbytes + nbytes // 4) // (2 << 20)) * (2 << 20))  # 25 % slack, whole 2 MiB pages
        fd = os.memfd_create("dv365-loader-arena", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, nbytes)
            buf = np.frombuffer(_map(fd, nbytes), dtype=np.uint8)
        except BaseException:
            os.close(fd)
            raise
        self._gen += 1
        arena = _Arena(fd, self._gen, nbytes)
        if self.pin:
            arena.pinned = self._register(buf)
            if not arena.pinned and not self._warned:
                self._warned = True
                warnings.warn(f"{self.who}: could not page-lock the loader's shared memory (cudaHostRegister); "
                              "batches are delivered unpinned", RuntimeWarning, stacklevel=3)
        return arena, buf

    def _register(self, buf: np.ndarray) -> bool:
        import torch

        ptr = buf.ctypes.data
        try:
            err = torch.cuda.cudart().cudaHostRegister(ptr, buf.nbytes, 0)
        except Exception:  # noqa: BLE001
            return False
        if int(getattr(err, "value", err)) != 0:
            return False
        weakref.finalize(buf, _unregister, ptr)  # when the last batch view of this mapping is gone
        return True

    def _fence(self, i: int) -> bool:
        """Whether arena ``i`` may be written: with pinned memory, once the work queued on the consumer's current
        CUDA stream when the arena was first seen idle is done — the consumer may have dropped a batch right after
        queueing its non-blocking copy, whose DMA still reads the arena. An event recorded then, not a
        synchronisation, so the consumer's next GPU step is not delayed."""
        a = self.arenas[i]
        if not (a.pinned and a.used):
            return True
        if a.fence is None:
            import torch

            if not torch.cuda.is_initialized():
                return True
            a.fence = torch.cuda.Event()
            a.fence.record()
        return a.fence.query()

    def take(self, nbytes: int) -> int:
        """An idle arena of at least ``nbytes`` (reused, replaced by a larger one, or new), marked busy."""
        idle = [i for i, a in enumerate(self.arenas) if not a.busy and sys.getrefcount(self.bufs[i]) == a.idle]
        ready = {i for i in idle if self._fence(i)}
        fits = [i for i in idle if self.arenas[i].nbytes >= nbytes]
        fits_ready = [i for i in fits if i in ready]
        if fits_ready:
            i = min(fits_ready, key=lambda i: self.arenas[i].nbytes)
        elif fits and len(self.arenas) >= self.keep:  # no room for another: wait for one's copies
            i = min(fits, key=lambda i: self.arenas[i].nbytes)
            self.arenas[i].fence.synchronize()
        else:
            arena, buf = self._new_arena(nbytes)
            if idle and len(self.arenas) >= self.keep:  # replace the largest idle arena that is too small
                i = max(idle, key=lambda i: self.arenas[i].nbytes)
                if self.arenas[i].fence is not None:
                    self.arenas[i].fence.synchronize()  # unmapped below: no copy may still read it
                os.close(self.arenas[i].fd)
                self.arenas[i], self.bufs[i] = arena, buf
            else:
                i = len(self.arenas)
                self.arenas.append(arena)
                self.bufs.append(buf)
            del buf  # only the pool references it now: that count is "idle" (measured, not assumed)
            self.arenas[i].idle = sys.getrefcount(self.bufs[i])
        a = self.arenas[i]
        a.busy, a.fence = True, None
        return i

    def release(self, i: int) -> None:
        """Arena ``i`` is no longer reserved; it is reused once no batch view references it."""
        self.arenas[i].busy, self.arenas[i].used = False, True

    # work --------------------------------------------------------------------------------------
    def submit(self, seq: int, arena: int, task: Any) -> None:
        a = self.arenas[arena]
        w = seq % len(self.procs)
        try:
            self.conns[w].send((seq, arena, a.fd, a.gen, a.nbytes, task))
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            raise self._died(w, seq) from None

    def result(self, seq: int, what: str) -> None:
        """Wait for batch ``seq``; raises ``RuntimeError`` naming the worker if it failed or died."""
        w = seq % len(self.procs)
        conn, proc = self.conns[w], self.procs[w]
        while True:
            ready = mp.connection.wait([conn, proc.sentinel])
            if conn in ready:
                try:
                    got, err = conn.recv()
                except (EOFError, OSError):
                    raise self._died(w, seq, what) from None
                if got != seq:
                    raise RuntimeError(f"{self.who}: loader worker {w} answered batch {got}, expected {seq}")
                if err is not None:
                    raise RuntimeError(f"{self.who}: loader worker {w} (pid {proc.pid}) failed on batch {seq}"
                                       f"{what}:\n{err}")
                return
            if proc.sentinel in ready:
                raise self._died(w, seq, what)

    def _died(self, w: int, seq: int, what: str = "") -> RuntimeError:
        proc = self.procs[w]
        proc.join(timeout=1.0)
        code = proc.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return RuntimeError(f"{self.who}: loader worker {w} (pid {proc.pid}) {how} while building batch {seq}{what}")

    # shutdown ----------------------------------------------------------------------------------
    @staticmethod
    def _terminate(procs, conns, graceful: bool = False) -> None:
        for c in conns:
            try:
                if graceful:
                    c.send(None)
            except (OSError, ValueError):
                pass
        for p in procs:
            p.join(timeout=2.0 if graceful else 0.0)
        for p in procs:
            if p.exitcode is None:
                p.kill()
        for p in procs:
            p.join(timeout=5.0)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    def close(self, graceful: bool = True) -> None:
        """Stop the workers (a clean exit, else killed) and release the arenas; batches still held stay valid."""
        if self.closed:
            return
        self.closed = True
        if hasattr(self, "_finalizer"):
            self._finalizer.detach()
        ProcessPool._terminate(self.procs, self.conns, graceful)
        for a in self.arenas:
            try:
                os.close(a.fd)
            except OSError:
                pass
        self.arenas, self.bufs = [], []
