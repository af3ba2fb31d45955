"""The embedded backend: one LMDB directory, one writer at a time, many reader processes (memory-mapped reads).

Layout (named databases of one environment):

- ``meta``: ``format``, ``next_vid``, ``seq`` (publish counter), ``current`` (the current version's name);
- ``index``: version name -> (internal id ``vid``, staged / published);
- ``info``: vid -> JSON (name, created, updated, record layout, and once published the manifest);
- ``parts`` / ``pids``: (vid, part) -> the part's count and checksum / its user ids (int64 LE);
- ``records``: (vid uint32 BE, user id with the sign bit flipped, uint64 BE) -> header + payload.

Every step is one LMDB write transaction, so it happens entirely or not at all: a part (its old records removed,
the new ones written), a publish (verification, manifest, switch of ``current``), a gc. A process killed
anywhere (SIGKILL, power loss) leaves the last committed state; readers see the snapshot their read transaction
began with, so one request reads one version. Internal ids are never reused, so a name staged again after a gc
cannot meet leftovers.

Sizing: LMDB needs the maximum size of its memory map up front. The map starts at ``map_size`` (default 1 GiB,
or twice the data file when that is larger) and doubles each time a write hits MDB_MAP_FULL (the transaction is
retried), up to ``max_map_size`` (default 1 TiB; the map is address space, the file only grows as pages are
written). A write that fails (the cap reached, a full disk) is rolled back, so the previous version stays current.
Deleted versions' pages are reused by later writes; the file does not shrink.

Processes: open the store in each process after ``fork`` (an LMDB environment must not cross a fork); readers
may use one store from many threads; writes from one process are serialized by a lock, across processes by LMDB.
"""

from __future__ import annotations

import json
import os
import struct
import threading

import numpy as np

from .base import (
    newest,
    FORMAT,
    EmbeddingStore,
    PartInfo,
    RecordLayout,
    StoreError,
    VerifyReport,
    VersionInfo,
    _crash_point,
    check_part_records,
    dumps,
    encode_records,
    iso_age_seconds,
    now_iso,
    part_checksum,
    record_part,
    select_parts,
    store_manifest,
    unknown_version,
)

STAGED, PUBLISHED = 0, 1
_INDEX = struct.Struct("<IB")
_VID = struct.Struct(">I")
_VIDPART = struct.Struct(">II")
_SIGN = np.uint64(1 << 63)
_CHUNK = 256  # records encoded per step of a part write
DEFAULT_MAP_SIZE = 1 << 30
DEFAULT_MAX_MAP_SIZE = 1 << 40
_DBS = (b"meta", b"index", b"info", b"parts", b"pids", b"records")


def _lmdb():
    try:
        import lmdb
    except ImportError:
        raise StoreError("the LMDB store needs the lmdb package: pip install lmdb") from None
    return lmdb


def record_keys(vid: int, ids: np.ndarray) -> list[bytes]:
    """Keys of users ``ids`` in version ``vid``: sorted like the ids numerically within a version."""
    raw = (ids.view(np.uint64) ^ _SIGN).astype(">u8").tobytes()
    prefix = _VID.pack(vid)
    return [prefix + raw[i:i + 8] for i in range(0, len(raw), 8)]


_LMDB_FILES = {"data.mdb", "lock.mdb"}


class _SharedEnv:
    """One LMDB environment per process and directory: LMDB's locks belong to the (process, file) pair, so
    every store object of a process that opens the same directory shares it (and its writer lock)."""

    def __init__(self, path: str, create: bool, readonly: bool, map_size: int | None, max_map_size: int):
        lmdb = _lmdb()
        self.readonly = readonly
        self.refs = 0
        self.lock = threading.Lock()
        data = os.path.join(path, "data.mdb")
        fresh = not os.path.exists(data)
        if fresh:
            if not create or readonly:
                what = "is a directory without a dv365 store" if os.path.isdir(path) else "does not exist"
                raise StoreError(f"open_store: {path} {what} (create=True makes a new store)")
            if os.path.exists(path) and not os.path.isdir(path):
                raise StoreError(f"open_store: {path} is a file, not a store directory")
            # LMDB's own files alone: another process is creating the store right now (its init below is
            # idempotent, so both end with one store)
            if os.path.isdir(path) and set(os.listdir(path)) - _LMDB_FILES:
                raise StoreError(f"open_store: {path} is a non-empty directory that is not a dv365 store; "
                                 f"give an empty or new directory")
            os.makedirs(path, exist_ok=True)
        size = 0 if fresh else os.path.getsize(data)
        start = max(int(map_size or DEFAULT_MAP_SIZE), 2 * size)
        try:
            self.env = lmdb.open(path, map_size=min(start, max(max_map_size, size)), max_dbs=len(_DBS),
                                 subdir=True, readonly=readonly, create=fresh, readahead=False, meminit=False,
                                 max_readers=512)
        except lmdb.Error as e:
            hint = " (an LMDB environment must not cross a fork: open the store in the child)" \
                if "already open" in str(e) else ""
            raise StoreError(f"open_store: cannot open {path} as an LMDB store: {e}{hint}") from None
        try:
            if not fresh:
                with self.env.begin() as txn:
                    names = {bytes(k) for k in txn.cursor().iternext(values=False)}
                # an environment without any database yet: another process opened it to create the store and has
                # not committed its init; with create, take part in it
                if not names and create and not readonly:
                    fresh = True
                elif not set(_DBS) <= names:
                    raise StoreError(f"open_store: {path} is an LMDB environment but not a dv365 store")
            if fresh:
                # LMDB serialises write transactions across processes; the first init wins, a later one (another
                # process creating the same store at the same time) finds the format written and changes nothing
                with self.env.begin(write=True) as txn:
                    self.db = {n.decode(): self.env.open_db(n, txn=txn) for n in _DBS}
                    if txn.get(b"format", db=self.db["meta"]) is None:
                        txn.put(b"format", FORMAT.encode(), db=self.db["meta"])
                        txn.put(b"next_vid", _VID.pack(1), db=self.db["meta"])
                        txn.put(b"seq", struct.pack(">Q", 0), db=self.db["meta"])
            # outside a caller's transaction: handles opened in a read transaction die with it
            self.db = {n.decode(): self.env.open_db(n, create=False) for n in _DBS}
            with self.env.begin() as txn:
                fmt = txn.get(b"format", db=self.db["meta"])
                if fmt is None or bytes(fmt).decode() != FORMAT:
                    raise StoreError(f"open_store: {path} has store format {fmt and bytes(fmt).decode()!r}, "
                                     f"this dv365 reads {FORMAT!r}")
            if not readonly:
                self.env.reader_check()  # slots of reader processes that were killed
        except lmdb.Error as e:
            self.env.close()
            raise StoreError(f"open_store: {path} is not a readable dv365 store: {e}") from None
        except StoreError:
            self.env.close()
            raise


_SHARED: dict[tuple[int, str], _SharedEnv] = {}
_SHARED_LOCK = threading.Lock()


class LMDBStore(EmbeddingStore):
    def __init__(self, path: str, *, create: bool = False, readonly: bool = False, map_size: int | None = None,
                 max_map_size: int = DEFAULT_MAX_MAP_SIZE, on_corrupt: str = "mask"):
        path = os.path.abspath(os.path.expanduser(path))
        super().__init__(f"lmdb://{path}", on_corrupt=on_corrupt)
        self.path = path
        self.readonly = readonly
        self.max_map_size = int(max_map_size)
        self._closed = True
        key = (os.getpid(), os.path.realpath(path))
        with _SHARED_LOCK:
            shared = _SHARED.get(key)
            if shared is None:
                shared = _SHARED[key] = _SharedEnv(path, create, readonly, map_size, self.max_map_size)
            elif shared.readonly and not readonly:
                raise StoreError(f"open_store: {path} is already open readonly in this process; close that store "
                                 f"first to open it for writing")
            shared.refs += 1
        self._shared = shared
        self._key = key
        self.env = shared.env
        self._db = shared.db
        self._write_lock = shared.lock
        self._closed = False

    # --- transactions ------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.url}: the store is closed")

    def _read_txn(self):
        lmdb = _lmdb()
        self._check_open()
        try:
            return self.env.begin(buffers=True)
        except lmdb.MapResizedError:  # another process grew the map: adopt its size
            self.env.set_mapsize(0)
            return self.env.begin(buffers=True)

    def _write(self, fn, where: str):
        lmdb = _lmdb()
        self._check_open()
        if self.readonly:
            raise StoreError(f"{where}: {self.url} was opened readonly")
        with self._write_lock:
            while True:
                try:
                    with self.env.begin(write=True, buffers=True) as txn:
                        return fn(txn)
                except lmdb.MapFullError:
                    cur = self.env.info()["map_size"]
                    if cur >= self.max_map_size:
                        raise StoreError(f"{where}: {self.url} is full (map_size {cur} bytes reached max_map_size "
                                         f"{self.max_map_size}); nothing was written, the current version is "
                                         f"unchanged") from None
                    self.env.set_mapsize(min(2 * cur, self.max_map_size))
                except lmdb.MapResizedError:
                    self.env.set_mapsize(0)
                except lmdb.Error as e:
                    raise StoreError(f"{where}: write to {self.url} failed and was rolled back ({type(e).__name__}: "
                                     f"{e}); the current version is unchanged") from None

    def _version(self, txn, name: str) -> tuple[int, int] | None:
        v = txn.get(name.encode(), db=self._db["index"])
        return None if v is None else _INDEX.unpack(v)

    def _info(self, txn, vid: int) -> dict:
        return json.loads(bytes(txn.get(_VID.pack(vid), db=self._db["info"])))

    def _published_names(self, txn) -> list[str]:
        rows = []
        for k, v in txn.cursor(db=self._db["index"]):
            vid, state = _INDEX.unpack(v)
            if state == PUBLISHED:
                rows.append((self._info(txn, vid)["seq"], bytes(k).decode()))
        return [n for _, n in sorted(rows)]

    def _written_parts(self, txn, vid: int) -> dict[int, dict]:
        prefix = _VID.pack(vid)
        out = {}
        cur = txn.cursor(db=self._db["parts"])
        if cur.set_range(prefix):
            for k, v in cur:
                k = bytes(k)
                if k[:4] != prefix:
                    break
                out[_VIDPART.unpack(k)[1]] = json.loads(bytes(v))
        return out

    def _delete_prefix(self, txn, db: str, prefix: bytes) -> None:
        cur = txn.cursor(db=self._db[db])
        if not cur.set_range(prefix):
            return
        while bytes(cur.key()[:len(prefix)]) == prefix:
            if not cur.delete():
                break

    # --- writing -----------------------------------------------------------------------------------------------
    def _stage(self, name: str) -> None:
        def fn(txn):
            got = self._version(txn, name)
            if got is not None:
                if got[1] == PUBLISHED:
                    raise StoreError(f"stage({name!r}): version {name!r} is published and immutable; stage a new name")
                return
            meta = self._db["meta"]
            vid = _VID.unpack(txn.get(b"next_vid", db=meta))[0]
            txn.put(b"next_vid", _VID.pack(vid + 1), db=meta)
            txn.put(name.encode(), _INDEX.pack(vid, STAGED), db=self._db["index"])
            t = now_iso()
            txn.put(_VID.pack(vid), dumps({"name": name, "created": t, "updated": t, "layout": None}),
                    db=self._db["info"])

        self._write(fn, f"stage({name!r})")

    def _staged_vid(self, txn, name: str, where: str) -> int:
        got = self._version(txn, name)
        if got is None:
            raise StoreError(f"{where}: version {name!r} is not staged in {self.url} (call store.stage first)")
        if got[1] == PUBLISHED:
            raise StoreError(f"{where}: version {name!r} is published and immutable")
        return got[0]

    def _write_part(self, name: str, part: int, ids: np.ndarray, buf: np.ndarray, layout: RecordLayout) -> PartInfo:
        where = f"write_part(version {name!r}, part {part})"

        def fn(txn):
            vid = self._staged_vid(txn, name, where)
            info = self._info(txn, vid)
            if info["layout"] is None:
                info["layout"] = layout.to_json()
            elif RecordLayout.from_json(info["layout"]) != layout:
                old = info["layout"]
                raise StoreError(f"{where}: records are {layout.dtype} {list(layout.shape)} but this version's parts "
                                 f"are {old['dtype']} {old['shape']}")
            records = self._db["records"]
            pkey = _VIDPART.pack(vid, part)
            old_ids = txn.get(pkey, db=self._db["pids"])
            if old_ids is not None:  # a re-run of this part: its earlier records go first
                for k in record_keys(vid, np.frombuffer(old_ids, dtype="<i8")):
                    txn.delete(k, db=records)
            sums = np.empty(len(ids), dtype="<u8")
            for s in range(0, len(ids), _CHUNK):
                chunk = ids[s:s + _CHUNK]
                values, sums[s:s + len(chunk)] = encode_records(chunk, buf[s:s + _CHUNK], part)
                for uid, k, v in zip(chunk.tolist(), record_keys(vid, chunk), values):
                    prev = txn.get(k, db=records)
                    if prev is not None:
                        owner = record_part(prev)
                        raise StoreError(f"{where}: user {uid} is already in part {owner} of this version")
                    txn.put(k, v, db=records)
                if s == 0:
                    _crash_point("write_part:records")
            result = PartInfo(part, len(ids), part_checksum(ids, sums))
            txn.put(pkey, ids.astype("<i8", copy=False).tobytes(), db=self._db["pids"])
            txn.put(pkey, dumps({"count": result.count, "checksum": result.checksum}), db=self._db["parts"])
            info["updated"] = now_iso()
            txn.put(_VID.pack(vid), dumps(info), db=self._db["info"])
            return result

        return self._write(fn, where)

    def _publish(self, name: str, manifest: dict, expected: dict[int, PartInfo | None] | None) -> dict:
        where = f"publish({name!r})"

        def fn(txn):
            got = self._version(txn, name)
            if got is None:
                raise StoreError(f"{where}: version {name!r} was never staged in {self.url}")
            if got[1] == PUBLISHED:
                raise StoreError(f"{where}: version {name!r} is already published (published versions are immutable)")
            vid = got[0]
            info = self._info(txn, vid)
            written = self._written_parts(txn, vid)
            parts = select_parts(name, written, expected)
            layout = RecordLayout.from_json(info["layout"]).with_int4(manifest, name)
            problems = self._check_parts(txn, vid, parts, written, layout.nbytes)
            if problems:
                cur = txn.get(b"current", db=self._db["meta"])
                raise StoreError(f"{where}: refused, {bytes(cur).decode() if cur else 'no version'} stays current: "
                                 + "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else ""))
            _crash_point("publish:verified")
            meta = self._db["meta"]
            seq = struct.unpack(">Q", txn.get(b"seq", db=meta))[0] + 1
            out = store_manifest(name, manifest, layout, written, parts, info["created"])
            info.update(manifest=out, seq=seq, published=out["store"]["published"], layout=layout.to_json())
            txn.put(b"seq", struct.pack(">Q", seq), db=meta)
            txn.put(_VID.pack(vid), dumps(info), db=self._db["info"])
            txn.put(name.encode(), _INDEX.pack(vid, PUBLISHED), db=self._db["index"])
            txn.put(b"current", name.encode(), db=meta)
            _crash_point("publish:switching")
            return out

        return self._write(fn, where)

    def _check_parts(self, txn, vid: int, parts: list[int], written: dict[int, dict], nbytes: int,
                     bad_records: list | None = None, bad_parts: list | None = None) -> list[str]:
        problems = []
        for p in parts:
            blob = txn.get(_VIDPART.pack(vid, p), db=self._db["pids"])
            ids = np.frombuffer(blob if blob is not None else b"", dtype="<i8")
            values = [txn.get(k, db=self._db["records"]) for k in record_keys(vid, ids)]
            bad, problem = check_part_records(p, written[p], ids, values, nbytes)
            if bad_records is not None:
                bad_records.extend(bad)
            if problem:
                if bad_parts is not None:
                    bad_parts.append((p, problem))
                problems.append(f"part {p}: {problem}" + (f" (user {bad[0][0]}: {bad[0][1]})" if bad else ""))
        return problems

    def set_current(self, version: str) -> None:
        def fn(txn):
            got = self._version(txn, version)
            if got is None or got[1] != PUBLISHED:
                raise unknown_version(version, self._published_names(txn), self.url)
            txn.put(b"current", version.encode(), db=self._db["meta"])

        self._write(fn, f"set_current({version!r})")

    # --- reading -----------------------------------------------------------------------------------------------
    def _read(self, ids: np.ndarray, version: str | None, decode) -> str | None:
        txn = self._read_txn()
        try:
            if version is None:
                cur = txn.get(b"current", db=self._db["meta"])
                if cur is None:
                    return None
                version = bytes(cur).decode()
            got = self._version(txn, version)
            if got is None or got[1] != PUBLISHED:
                raise unknown_version(version, self._published_names(txn), self.url)
            vid = got[0]
            layout = self._layouts.get(vid)
            if layout is None:
                layout = self._layouts[vid] = RecordLayout.from_json(self._info(txn, vid)["layout"])
            get = txn.get
            db = self._db["records"]
            decode(layout, [get(k, db=db) for k in record_keys(vid, ids)])
            return version
        finally:
            txn.abort()

    def _published_layout(self, name: str) -> RecordLayout:
        txn = self._read_txn()
        try:
            got = self._version(txn, name)
            if got is None or got[1] != PUBLISHED:
                raise unknown_version(name, self._published_names(txn), self.url)
            return RecordLayout.from_json(self._info(txn, got[0])["layout"])
        finally:
            txn.abort()

    def current(self) -> str | None:
        txn = self._read_txn()
        try:
            cur = txn.get(b"current", db=self._db["meta"])
            return None if cur is None else bytes(cur).decode()
        finally:
            txn.abort()

    def versions(self) -> list[VersionInfo]:
        txn = self._read_txn()
        try:
            cur = txn.get(b"current", db=self._db["meta"])
            cur = None if cur is None else bytes(cur).decode()
            rows = []
            for k, v in txn.cursor(db=self._db["index"]):
                name = bytes(k).decode()
                vid, state = _INDEX.unpack(v)
                info = self._info(txn, vid)
                parts = self._written_parts(txn, vid)
                users = sum(p["count"] for p in parts.values())
                nbytes = users * RecordLayout.from_json(info["layout"]).nbytes if info["layout"] else 0
                order = (0, info["seq"], "") if state == PUBLISHED else (1, 0, info["created"])
                rows.append((order, VersionInfo(name, "published" if state == PUBLISHED else "staged", name == cur,
                                                users, len(parts), nbytes, info["created"], info.get("published"))))
            return [r for _, r in sorted(rows, key=lambda x: x[0])]
        finally:
            txn.abort()

    def manifest(self, version: str | None = None) -> dict:
        txn = self._read_txn()
        try:
            if version is None:
                cur = txn.get(b"current", db=self._db["meta"])
                if cur is None:
                    raise StoreError(f"manifest: {self.url} has no current version")
                version = bytes(cur).decode()
            got = self._version(txn, version)
            if got is None or got[1] != PUBLISHED:
                raise unknown_version(version, self._published_names(txn), self.url)
            return self._info(txn, got[0])["manifest"]
        finally:
            txn.abort()

    # --- maintenance -------------------------------------------------------------------------------------------
    def verify(self, version: str | None = None) -> VerifyReport:
        txn = self._read_txn()
        try:
            if version is None:
                cur = txn.get(b"current", db=self._db["meta"])
                if cur is None:
                    raise StoreError(f"verify: {self.url} has no current version")
                version = bytes(cur).decode()
            got = self._version(txn, version)
            if got is None:
                raise StoreError(f"verify: version {version!r} is not in {self.url} "
                                 f"(known: {', '.join(v.name for v in self.versions()) or 'none'})")
            vid = got[0]
            info = self._info(txn, vid)
            written = self._written_parts(txn, vid)
            bad_records: list = []
            bad_parts: list = []
            if info["layout"] is not None:
                nbytes = RecordLayout.from_json(info["layout"]).nbytes
                self._check_parts(txn, vid, sorted(written), written, nbytes, bad_records, bad_parts)
            if got[1] == PUBLISHED:
                listed = {int(p) for p in info["manifest"]["store"]["parts"]}
                if listed != set(written):
                    bad_parts.append((-1, f"parts written {sorted(written)} != parts published {sorted(listed)}"))
            return VerifyReport(version, sum(p["count"] for p in written.values()), len(written), bad_records,
                                bad_parts)
        finally:
            txn.abort()

    def _gc(self, keep_last: int, staged_older_than: float) -> list[str]:
        def fn(txn):
            cur = txn.get(b"current", db=self._db["meta"])
            cur = None if cur is None else bytes(cur).decode()
            published = self._published_names(txn)
            keep = newest(published, keep_last) | {cur}
            doomed = []
            for k, v in txn.cursor(db=self._db["index"]):
                name = bytes(k).decode()
                vid, state = _INDEX.unpack(v)
                if state == PUBLISHED and name not in keep:
                    doomed.append((name, vid))
                elif state == STAGED and iso_age_seconds(self._info(txn, vid)["updated"]) >= staged_older_than:
                    doomed.append((name, vid))
            for i, (name, vid) in enumerate(doomed):
                prefix = _VID.pack(vid)
                self._delete_prefix(txn, "records", prefix)
                if i == 0:
                    _crash_point("gc:deleting")
                self._delete_prefix(txn, "parts", prefix)
                self._delete_prefix(txn, "pids", prefix)
                txn.delete(prefix, db=self._db["info"])
                txn.delete(name.encode(), db=self._db["index"])
            return [n for n, _ in doomed]

        return self._write(fn, "gc")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _SHARED_LOCK:
            self._shared.refs -= 1
            if self._shared.refs == 0:
                _SHARED.pop(self._key, None)
                self._shared.env.close()
