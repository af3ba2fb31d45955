"""The versioned embedding-store interface shared by the LMDB and Redis backends (paper 2.4; docs/store.md).

A store holds *versions*: immutable snapshots ``user_id -> record``, where a record is one user's exported
embedding, the user tower's ``[N_out, D]`` output in int4 rows (``dv365_ops.int4_quantize``: D/2 code bytes +
scale + bias per row, 136 bytes for D = 256, 58 rows per user). A version is written in *parts* (one per export
worker, in any process), then published: every part is read back and checked, and one atomic switch of the
``current`` pointer makes it visible. Readers resolve ``current`` once per request, so a request never mixes
versions.

Stored value of a record: a 12-byte header, the checksum ``xxh3_64(payload, seed=user_id)`` (uint64
little-endian; the seed is the user id's two's-complement uint64, so a record moved to another user fails too) and
the part number (uint32 little-endian), then the payload (the record's bytes as written). The part number lets a
re-run part replace exactly what it wrote before and lets publish detect a user written by two parts. xxh3 rather
than zlib's crc32: checksumming every record is most of a lookup's CPU time, and xxh3 is the faster of the two
by an order of magnitude (docs/store.md).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import signal
import struct
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from xxhash import xxh3_64_intdigest

FORMAT = "dv365-store/1"
HEADER = struct.Struct("<QI")  # checksum, part
CHECKSUM = "xxh3_64(payload, seed=uint64(user_id))"
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")
_MAX_PART = 2**32 - 1
# Fault injection for the crash-safety tests: the process SIGKILLs itself at the named step (see _crash_point).
_CRASH_AT = os.environ.get("DV365_STORE_CRASH_AT", "")


class StoreError(RuntimeError):
    """Any store failure a caller can act on: unknown version, not a store, connection, corruption, bad input."""


@dataclasses.dataclass(frozen=True)
class PartInfo:
    """What :meth:`StagedVersion.write_part` wrote: ``checksum`` is xxh3_64 over the part's user ids (int64 LE,
    in the order given) followed by its records' checksums (uint64 LE)."""

    part: int
    count: int
    checksum: int


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    name: str
    state: str  # "published" or "staged"
    current: bool
    users: int
    parts: int
    bytes: int  # payload bytes over all records (headers and backend overhead excluded)
    created: str  # ISO 8601 UTC, when the version was staged
    published: str | None


@dataclasses.dataclass
class LookupResult:
    """``records [n, *record_shape]`` as written (zeros where not found), ``found`` bool ``[n]``, the one
    ``version`` every row comes from, ``corrupt`` bool ``[n]`` (records whose checksum failed: zeros,
    ``found=False``), and for :meth:`EmbeddingStore.lookup` ``embeddings`` float32 ``[n, num_tokens, dim]``."""

    records: Any
    found: Any
    version: str | None
    corrupt: Any
    embeddings: Any = None


@dataclasses.dataclass
class VerifyReport:
    version: str
    users: int
    parts: int
    bad_records: list[tuple[int, str]]  # (user_id, reason)
    bad_parts: list[tuple[int, str]]  # (part, reason)

    @property
    def ok(self) -> bool:
        return not self.bad_records and not self.bad_parts

    def __str__(self) -> str:
        head = (f"version {self.version}: {self.users} users in {self.parts} parts, "
                f"{'ok' if self.ok else f'{len(self.bad_records)} bad records, {len(self.bad_parts)} bad parts'}")
        lines = [head]
        lines += [f"  part {p}: {why}" for p, why in self.bad_parts[:20]]
        lines += [f"  user {u}: {why}" for u, why in self.bad_records[:20]]
        more = len(self.bad_parts) + len(self.bad_records) - len(lines) + 1
        if more > 0:
            lines.append(f"  ... and {more} more")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class RecordLayout:
    """A version's record: ``dtype`` (uint8 or int64) and ``shape`` as written, and, once published, how its
    bytes read as int4 rows (``num_tokens`` rows of ``row_bytes``; ``dim`` and ``half_scale_bias`` for
    ``int4_dequantize``; None where the bytes cannot be int4 rows)."""

    dtype: str
    shape: tuple[int, ...]
    num_tokens: int | None = None
    row_bytes: int | None = None
    dim: int | None = None
    half_scale_bias: bool | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["bytes"] = self.nbytes
        d["checksum"] = CHECKSUM
        return d

    @classmethod
    def from_json(cls, d: dict) -> "RecordLayout":
        return cls(dtype=d["dtype"], shape=tuple(d["shape"]), num_tokens=d.get("num_tokens"),
                   row_bytes=d.get("row_bytes"), dim=d.get("dim"), half_scale_bias=d.get("half_scale_bias"))

    def with_int4(self, manifest: dict, version: str) -> "RecordLayout":
        """Fills the int4 fields from the records' shape and the manifest's optional ``num_tokens``, ``dim`` and
        ``half_scale_bias`` (default False), checking that they agree."""
        where = f"publish({version!r})"
        hsb = manifest.get("half_scale_bias", False)
        if not isinstance(hsb, bool):
            raise StoreError(f"{where}: manifest 'half_scale_bias' must be true or false, got {hsb!r}")
        tokens = manifest.get("num_tokens")
        if tokens is None:
            tokens = self.shape[0] if len(self.shape) >= 2 else 1
        if not isinstance(tokens, int) or tokens <= 0 or self.nbytes % tokens:
            raise StoreError(f"{where}: manifest 'num_tokens' = {tokens!r} does not divide the {self.nbytes}-byte "
                             f"records (shape {list(self.shape)} {self.dtype})")
        row = self.nbytes // tokens
        tail = 4 if hsb else 8
        dim = 2 * (row - tail) if row > tail else None
        want = manifest.get("dim")
        if want is not None and want != dim:
            raise StoreError(f"{where}: manifest 'dim' = {want!r} but {row}-byte int4 rows hold dim = {dim} "
                             f"(half_scale_bias={hsb})")
        return dataclasses.replace(self, num_tokens=tokens, row_bytes=row, dim=dim, half_scale_bias=hsb)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_age_seconds(iso: str) -> float:
    t = datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return (datetime.datetime.now(datetime.timezone.utc) - t).total_seconds()


def _crash_point(step: str) -> None:
    """Tests set ``DV365_STORE_CRASH_AT=<step>`` to SIGKILL the process here, at a chosen point of a write."""
    if _CRASH_AT == step:
        os.kill(os.getpid(), signal.SIGKILL)


def check_version_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not _VERSION_RE.fullmatch(name):
        raise StoreError(f"{where}: version name {name!r} must be 1-128 characters of A-Z a-z 0-9 . _ : + - "
                         f"starting with a letter or digit")
    return name


def check_part(part: object, where: str) -> int:
    if isinstance(part, (bool, np.bool_)) or not isinstance(part, (int, np.integer)) or not 0 <= part <= _MAX_PART:
        raise StoreError(f"{where}: part must be an int in [0, 2**32), got {part!r}")
    return int(part)


def as_ids(user_ids: Any, where: str) -> np.ndarray:
    """Tensor / ndarray / sequence of ints -> contiguous int64 ``[n]``."""
    if hasattr(user_ids, "detach") and hasattr(user_ids, "cpu"):  # a torch tensor, without importing torch
        user_ids = user_ids.detach().cpu().numpy()
    arr = np.asarray(user_ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer)):
        raise StoreError(f"{where}: user_ids must be a 1-D sequence of integers, got {arr.ndim}-D {arr.dtype}")
    if arr.dtype == np.uint64 and (arr > np.iinfo(np.int64).max).any():
        raise StoreError(f"{where}: user_ids must fit int64")
    return np.ascontiguousarray(arr, dtype=np.int64)


def as_records(records: Any, n: int, where: str) -> tuple[np.ndarray, RecordLayout]:
    """``[n, ...]`` uint8 or int64 -> (uint8 ``[n, nbytes]`` view, layout)."""
    if hasattr(records, "detach") and hasattr(records, "cpu"):
        records = records.detach().cpu().contiguous().numpy()
    arr = np.ascontiguousarray(records)
    if arr.dtype not in (np.uint8, np.int64):
        raise StoreError(f"{where}: records must be uint8 or int64 (dv365_ops.int4_quantize's packed rows or "
                         f"as_int64 of them), got {arr.dtype}")
    if arr.ndim < 2 or arr.shape[0] != n:
        raise StoreError(f"{where}: records must be [n={n}, ...] with at least 2 dims, got shape {list(arr.shape)}")
    layout = RecordLayout(dtype=str(arr.dtype), shape=tuple(int(s) for s in arr.shape[1:]))
    if layout.nbytes == 0:
        raise StoreError(f"{where}: records are empty (shape {list(arr.shape)})")
    return arr.reshape(n, -1).view(np.uint8).reshape(n, layout.nbytes), layout


def uid_seeds(ids: np.ndarray) -> list[int]:
    """Each user id as the uint64 seed of its record's checksum."""
    return ids.view(np.uint64).tolist()


def record_part(value: Any) -> int:
    """The part number in a stored value's header."""
    return HEADER.unpack_from(value)[1]


def encode_records(ids: np.ndarray, buf: np.ndarray, part: int) -> tuple[list[bytes], np.ndarray]:
    """Stored values (header + payload) and their checksums, for rows ``buf [n, nbytes]`` of users ``ids``."""
    sums = np.empty(len(ids), dtype="<u8")
    values = []
    pack = HEADER.pack
    for i, seed in enumerate(uid_seeds(ids)):
        payload = buf[i].tobytes()
        h = xxh3_64_intdigest(payload, seed)
        sums[i] = h
        values.append(pack(h, part) + payload)
    return values, sums


def part_checksum(ids: np.ndarray, sums: np.ndarray) -> int:
    raw = ids.astype("<i8", copy=False).tobytes() + np.ascontiguousarray(sums, dtype="<u8").tobytes()
    return xxh3_64_intdigest(raw)


def check_part_records(part: int, info: dict, ids: np.ndarray, values: Sequence[Any], nbytes: int
                       ) -> tuple[list[tuple[int, str]], str | None]:
    """Re-checks one written part: every record present, of this part, of the right size, its checksum right;
    then the part's count and checksum against what ``write_part`` recorded. Returns (bad records, part problem)."""
    bad: list[tuple[int, str]] = []
    sums = np.zeros(len(ids), dtype="<u8")
    seeds = uid_seeds(ids)
    unpack = HEADER.unpack_from
    for i, v in enumerate(values):
        uid = int(ids[i])
        if v is None:
            bad.append((uid, f"record of part {part} is missing"))
            continue
        if len(v) != HEADER.size + nbytes:
            bad.append((uid, f"record is {len(v) - HEADER.size} bytes, expected {nbytes}"))
            continue
        h, owner = unpack(v)
        if owner != part:
            bad.append((uid, f"listed in part {part} but its record was written by part {owner}"))
            continue
        if xxh3_64_intdigest(memoryview(v)[HEADER.size:], seeds[i]) != h:
            bad.append((uid, "checksum mismatch (corrupted record)"))
            continue
        sums[i] = h
    problem = None
    if bad:
        problem = f"{len(bad)} bad records"
    elif len(ids) != info["count"]:
        problem = f"holds {len(ids)} users but write_part recorded {info['count']}"
    elif part_checksum(ids, sums) != info["checksum"]:
        problem = f"checksum {part_checksum(ids, sums):#018x} != {info['checksum']:#018x} recorded by write_part"
    return bad, problem


def decode_records(values: Iterable[Any], seeds: list[int], nbytes: int, out: np.ndarray,
                   found: np.ndarray, corrupt: np.ndarray) -> None:
    """Copies each verified payload into ``out [n, nbytes]``; a missing value leaves zeros, a bad one (wrong size
    or checksum) leaves zeros and sets ``corrupt``."""
    flat = memoryview(out.reshape(-1))
    unpack = HEADER.unpack_from
    h = xxh3_64_intdigest
    hs = HEADER.size
    size = hs + nbytes
    for i, v in enumerate(values):
        if v is None:
            continue
        if len(v) != size:
            corrupt[i] = True
            continue
        payload = memoryview(v)[hs:]
        if h(payload, seeds[i]) != unpack(v)[0]:
            corrupt[i] = True
            continue
        flat[i * nbytes:(i + 1) * nbytes] = payload
        found[i] = True


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class StagedVersion:
    """A version being written: :meth:`write_part` from any number of workers, then ``store.publish``."""

    def __init__(self, store: "EmbeddingStore", name: str):
        self.store = store
        self.version = name

    def write_part(self, part: int, user_ids: Any, records: Any) -> PartInfo:
        """Writes users ``user_ids`` (int64 ``[n]``) with ``records`` (uint8 or int64 ``[n, ...]``, e.g.
        ``int4_quantize`` rows ``[n, 58, 136]``) as part ``part``, replacing whatever an earlier run wrote as this
        part. Every part of a version must have the same record dtype and shape; a user belongs to one part."""
        where = f"write_part(version {self.version!r}, part {part!r})"
        part = check_part(part, where)
        ids = as_ids(user_ids, where)
        buf, layout = as_records(records, len(ids), where)
        if len(np.unique(ids)) != len(ids):
            uniq, counts = np.unique(ids, return_counts=True)
            raise StoreError(f"{where}: user_ids has duplicates, e.g. {int(uniq[counts > 1][0])}")
        return self.store._write_part(self.version, part, ids, buf, layout)

    def __repr__(self) -> str:
        return f"StagedVersion({self.version!r}, store={self.store.url!r})"


class EmbeddingStore:
    """One interface, two backends: :class:`~dv365.store.lmdb_store.LMDBStore` (embedded, one directory, one
    writer and many reader processes) and :class:`~dv365.store.redis_store.RedisStore` (a server many hosts read).

    Corrupted records (checksum mismatch) are never served: ``get`` returns them as zeros with ``found=False``
    and ``corrupt=True`` and logs a warning naming the user and version (``on_corrupt="mask"``, the default, so
    one bad record does not fail a batch), or raises :class:`StoreError` (``on_corrupt="raise"``).
    """

    url: str

    def __init__(self, url: str, on_corrupt: str = "mask"):
        if on_corrupt not in ("mask", "raise"):
            raise StoreError(f"open_store: on_corrupt must be 'mask' or 'raise', got {on_corrupt!r}")
        self.url = url
        self.on_corrupt = on_corrupt
        self._layouts: dict[int, RecordLayout] = {}  # published layouts by internal version id (never reused)
        self._write_lock = threading.Lock()

    # --- writing -----------------------------------------------------------------------------------------------
    def stage(self, version: str) -> StagedVersion:
        """Starts (or reopens, if staged and unpublished) version ``version`` for writing."""
        check_version_name(version, "stage")
        self._stage(version)
        return StagedVersion(self, version)

    def publish(self, version: str, manifest: dict, parts: Sequence[int | PartInfo] | None = None) -> dict:
        """Verifies every part of staged ``version`` (each record's checksum, each part's count and checksum;
        ``parts`` may be the :class:`PartInfo` the workers got back, then they must match too), records
        ``manifest`` and atomically makes ``version`` current. ``parts=None`` means every part written; a part
        written but not listed is refused. The manifest may carry ``num_tokens``, ``dim`` and ``half_scale_bias``
        (default False) for ``lookup``'s dequantization; the store adds ``manifest["store"]`` = {version, parts,
        users, created, published, record}. Returns the stored manifest."""
        where = f"publish({version!r})"
        check_version_name(version, "publish")
        if not isinstance(manifest, dict):
            raise StoreError(f"{where}: manifest must be a dict, got {type(manifest).__name__}")
        if "store" in manifest:
            raise StoreError(f"{where}: manifest key 'store' is reserved for what the store records")
        try:
            json.dumps(manifest)
        except (TypeError, ValueError) as e:
            raise StoreError(f"{where}: manifest is not JSON-serializable: {e}") from None
        expected: dict[int, PartInfo | None] | None = None
        if parts is not None:
            expected = {}
            for p in parts:
                if isinstance(p, PartInfo):
                    expected[check_part(p.part, where)] = p
                else:
                    expected[check_part(p, where)] = None
            if not expected:
                raise StoreError(f"{where}: parts is empty")
        return self._publish(version, manifest, expected)

    def set_current(self, version: str) -> None:
        """Makes an already published ``version`` current again (a rollback)."""
        raise NotImplementedError

    # --- reading -----------------------------------------------------------------------------------------------
    def current(self) -> str | None:
        raise NotImplementedError

    def versions(self) -> list[VersionInfo]:
        """Published versions in publish order, then staged ones by creation time."""
        raise NotImplementedError

    def manifest(self, version: str | None = None) -> dict:
        """The stored manifest of a published version (default: current)."""
        raise NotImplementedError

    def get(self, user_ids: Any, version: str | None = None) -> LookupResult:
        """Raw records of ``user_ids`` from ``version`` (default: ``current``, resolved once for the whole call).
        Missing users get zero records and ``found=False``; an unknown version raises :class:`StoreError`."""
        import torch

        name, records, found, corrupt = self._get_arrays(user_ids, version)
        return LookupResult(torch.from_numpy(records), torch.from_numpy(found), name, torch.from_numpy(corrupt))

    def lookup(self, user_ids: Any, version: str | None = None, dequantize: bool = True,
               device: Any = None) -> LookupResult:
        """:meth:`get`, then ``dv365_ops.int4_dequantize`` of every row on ``device``: ``embeddings`` float32
        ``[n, num_tokens, dim]``, zeros for users not found. ``dequantize=False`` moves the records only."""
        import torch

        name, records, found, corrupt = self._get_arrays(user_ids, version)
        res = LookupResult(torch.from_numpy(records), torch.from_numpy(found), name, torch.from_numpy(corrupt))
        if device is not None:
            res.records = res.records.to(device)
        if not dequantize:
            return res
        if name is None:
            raise StoreError("lookup: the store has no current version (publish one first)")
        layout = self._published_layout(name)
        if layout.dim is None or layout.dim <= 0:
            raise StoreError(f"lookup: version {name!r} holds {layout.row_bytes}-byte rows, too short for int4 rows "
                             f"(half_scale_bias={layout.half_scale_bias}); use get() for its raw records")
        import dv365_ops

        n = res.records.shape[0]
        packed = res.records.reshape(n, -1).view(torch.uint8).reshape(n * layout.num_tokens, layout.row_bytes)
        emb = dv365_ops.int4_dequantize(packed, half_scale_bias=layout.half_scale_bias)
        emb = emb.reshape(n, layout.num_tokens, layout.dim)
        # Zero records dequantize to zeros already (scale = bias = 0); zeroing the missing rows states it rather
        # than relying on it, in place (a masked multiply would write the whole output again).
        if not bool(res.found.all()):
            emb[~res.found.to(emb.device)] = 0
        res.embeddings = emb
        return res

    def _get_arrays(self, user_ids: Any, version: str | None) -> tuple[str | None, np.ndarray, np.ndarray, np.ndarray]:
        """``get`` in numpy: (version, records, found, corrupt)."""
        where = "get"
        if version is not None:
            check_version_name(version, where)
        ids = as_ids(user_ids, where)
        n = len(ids)
        got: list = []

        def decode(layout: RecordLayout, values: Iterable[Any]) -> None:
            # called by the backend inside its read snapshot (LMDB hands out views of its memory map)
            out = np.zeros((n, layout.nbytes), dtype=np.uint8)
            found = np.zeros(n, dtype=bool)
            corrupt = np.zeros(n, dtype=bool)
            decode_records(values, uid_seeds(ids), layout.nbytes, out, found, corrupt)
            got[:] = [layout, out, found, corrupt]

        name = self._read(ids, version, decode)
        if name is None:  # no current version: nothing is found
            return None, np.zeros((n, 0), dtype=np.uint8), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        layout, out, found, corrupt = got
        if corrupt.any():
            bad = ids[corrupt][:10].tolist()
            msg = (f"get: {int(corrupt.sum())} corrupted record(s) in version {name!r} of {self.url}, users {bad}"
                   f"{' ...' if corrupt.sum() > 10 else ''} (checksum mismatch; run `dv365 store verify`)")
            if self.on_corrupt == "raise":
                raise StoreError(msg)
            import logging

            logging.getLogger("dv365.store").warning(msg + "; served as not found")
        records = out.view(np.dtype(layout.dtype)).reshape(n, *layout.shape)
        return name, records, found, corrupt

    def _published_layout(self, name: str) -> RecordLayout:
        raise NotImplementedError

    # --- maintenance -------------------------------------------------------------------------------------------
    def gc(self, keep_last: int, staged_older_than: float = 3600.0) -> list[str]:
        """Removes published versions older than the ``keep_last`` most recently published (never the current
        one) and staged versions not written for ``staged_older_than`` seconds (abandoned exports; a running
        export keeps its version fresh with every part). Returns the removed names."""
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
            raise StoreError(f"gc: keep_last must be an int >= 0, got {keep_last!r}")
        if staged_older_than < 0:
            raise StoreError(f"gc: staged_older_than must be >= 0 seconds, got {staged_older_than!r}")
        return self._gc(keep_last, float(staged_older_than))

    def verify(self, version: str | None = None) -> VerifyReport:
        """Re-reads every record of ``version`` (default: current; staged versions too) and checks each record's
        checksum and each part's count and checksum."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "EmbeddingStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # --- backend hooks -----------------------------------------------------------------------------------------
    def _stage(self, name: str) -> None:
        raise NotImplementedError

    def _write_part(self, name: str, part: int, ids: np.ndarray, buf: np.ndarray, layout: RecordLayout) -> PartInfo:
        raise NotImplementedError

    def _publish(self, name: str, manifest: dict, expected: dict[int, PartInfo | None] | None) -> dict:
        raise NotImplementedError

    def _read(self, ids: np.ndarray, version: str | None, decode: Any) -> str | None:
        """Resolves ``version`` (None: current) and calls ``decode(layout, values)`` with each user's stored value
        (or None), all from one snapshot; returns the resolved name, None when there is no current version."""
        raise NotImplementedError

    def _gc(self, keep_last: int, staged_older_than: float) -> list[str]:
        raise NotImplementedError


def newest(published: list[str], keep_last: int) -> set[str]:
    """The ``keep_last`` most recently published names of ``published`` (oldest first); all when fewer."""
    return set(published[max(len(published) - keep_last, 0):]) if keep_last > 0 else set()


def select_parts(name: str, written: dict[int, dict], expected: dict[int, PartInfo | None] | None) -> list[int]:
    """The parts ``publish`` checks: all written ones, or exactly ``expected`` (then each must be written, none
    written may be left out, and a given PartInfo must match what was recorded)."""
    where = f"publish({name!r})"
    if not written:
        raise StoreError(f"{where}: no part has been written")
    if expected is None:
        return sorted(written)
    missing = sorted(set(expected) - set(written))
    if missing:
        raise StoreError(f"{where}: parts {missing} were not written (or their write did not finish); "
                         f"written: {sorted(written)}")
    extra = sorted(set(written) - set(expected))
    if extra:
        raise StoreError(f"{where}: parts {extra} were written but are not in the parts to publish")
    for p, info in expected.items():
        if info is None:
            continue
        rec = written[p]
        if info.count != rec["count"] or info.checksum != rec["checksum"]:
            raise StoreError(
                f"{where}: part {p} does not match its worker's PartInfo: count {rec['count']} checksum "
                f"{rec['checksum']:#018x} stored, count {info.count} checksum {info.checksum:#018x} reported "
                f"(was it rewritten by another run?)")
    return sorted(expected)


def store_manifest(name: str, manifest: dict, layout: RecordLayout, written: dict[int, dict], parts: list[int],
                   created: str) -> dict:
    out = dict(manifest)
    out["store"] = {
        "version": name,
        "format": FORMAT,
        "parts": {str(p): {"count": written[p]["count"], "checksum": written[p]["checksum"]} for p in parts},
        "users": int(sum(written[p]["count"] for p in parts)),
        "created": created,
        "published": now_iso(),
        "record": layout.to_json(),
    }
    return out


def unknown_version(name: str, known: Sequence[str], url: str) -> StoreError:
    listed = ", ".join(known[-20:]) if known else "none"
    return StoreError(f"version {name!r} is not a published version of {url} (published: {listed})")
