"""The server backend: a Redis database that many hosts read (standalone Redis; keys under one prefix ``P``).

Keys (``vid`` is an internal version id from ``P:next_vid``, never reused, so leftovers of a removed version can
never show up in a new one of the same name):

- ``P:format``; ``P:current`` (the current version's name); ``P:seq`` (publish counter);
- ``P:vid`` hash name -> vid (every live version); ``P:published`` hash name -> vid (published ones);
- ``P:info:{vid}`` JSON (name, created, and once published seq, manifest, layout); ``P:layout:{vid}``;
  ``P:updated:{vid}`` (last part write, for gc of abandoned versions);
- ``P:parts:{vid}`` hash part -> count and checksum of each *finished* part; ``P:partset:{vid}`` every part
  started; ``P:pids:{vid}:{part}`` its user ids (int64 LE), written before its records;
- ``P:r:{vid}:{user_id}`` header + payload; ``P:trash`` vids whose deletion a gc started.

A part write removes the part's entry and earlier records, stores its user ids, writes the records (pipelined),
then records the part: a writer killed midway leaves a part that publish refuses until it is written again.
Publish WATCHes the version's keys, re-reads and checks every record, then one MULTI/EXEC records the manifest and
sets ``P:current``. A read resolves the version (a Lua script: current -> vid), then MGETs the records in a
MULTI/EXEC that checks the vid again, so one request sees one version even if a gc runs beside it.

Connections: socket timeouts (``timeout``, default 5 s; connect 2 s) and a bounded retry (``retries``, default 2,
exponential backoff from 0.1 s): an unreachable server is a :class:`StoreError` naming the URL within seconds.
"""

from __future__ import annotations

import json
import urllib.parse
from contextlib import contextmanager
from typing import Any

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

_CHUNK = 256  # records per pipelined write / MGET
_WATCH_TRIES = 3

# ARGV: prefix, version name ('' for current). Returns {name|false, vid|false}.
_RESOLVE_LUA = """
local p = ARGV[1]
local name = ARGV[2]
if name == '' then
  name = redis.call('GET', p .. ':current')
  if not name then return {false, false} end
end
return {name, redis.call('HGET', p .. ':published', name)}
"""

# ARGV: prefix, name, info JSON. Returns the vid, or -1 if the name is published.
_STAGE_LUA = """
local p = ARGV[1]
if redis.call('HEXISTS', p .. ':published', ARGV[2]) == 1 then return -1 end
local v = redis.call('HGET', p .. ':vid', ARGV[2])
if v then return tonumber(v) end
v = redis.call('INCR', p .. ':next_vid')
redis.call('HSET', p .. ':vid', ARGV[2], v)
redis.call('SET', p .. ':info:' .. v, ARGV[3])
redis.call('SET', p .. ':updated:' .. v, ARGV[4])
return v
"""


def _redis():
    try:
        import redis
    except ImportError:
        raise StoreError("the Redis store needs the redis package: pip install redis") from None
    return redis


def _safe_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class RedisStore(EmbeddingStore):
    def __init__(self, url: str, *, create: bool = False, readonly: bool = False, on_corrupt: str = "mask",
                 timeout: float | None = None, retries: int | None = None, connect_timeout: float = 2.0):
        redis = _redis()
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        prefix = query.pop("prefix", ["dv365"])[-1]
        try:
            timeout = float(query.pop("timeout", [timeout if timeout is not None else 5.0])[-1])
            retries = int(query.pop("retries", [retries if retries is not None else 2])[-1])
        except ValueError as e:
            raise StoreError(f"open_store: bad timeout / retries in {_safe_url(url)}: {e}") from None
        if not prefix or any(c in prefix for c in " \t\r\n"):
            raise StoreError(f"open_store: prefix must be non-empty without spaces, got {prefix!r}")
        clean = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, doseq=True)))
        super().__init__(f"{_safe_url(clean.split('?')[0])}?prefix={prefix}", on_corrupt=on_corrupt)
        self.prefix = prefix
        self.readonly = readonly
        self._p = prefix.encode()
        self._errors_redis = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        try:
            self._r = redis.Redis.from_url(
                clean, socket_timeout=timeout, socket_connect_timeout=min(connect_timeout, timeout),
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), retries),
                retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
                decode_responses=False)
        except (ValueError, TypeError) as e:
            raise StoreError(f"open_store: bad Redis URL {_safe_url(url)}: {e}") from None
        self._closed = False
        with self._errors("open_store"):
            fmt = self._r.get(self._k("format"))
            if fmt is None:
                if not create or readonly:
                    raise StoreError(f"open_store: no dv365 store at {self.url} (prefix {prefix!r} holds no "
                                     f"{prefix}:format key; create=True makes one)")
                self._r.setnx(self._k("format"), FORMAT)
                fmt = self._r.get(self._k("format"))
            if fmt.decode() != FORMAT:
                raise StoreError(f"open_store: {self.url} has store format {fmt.decode()!r}, "
                                 f"this dv365 reads {FORMAT!r}")
            self._resolve_script = self._r.register_script(_RESOLVE_LUA)
            self._stage_script = self._r.register_script(_STAGE_LUA)

    def _k(self, *parts: Any) -> bytes:
        return b":".join([self._p] + [p if isinstance(p, bytes) else str(p).encode() for p in parts])

    @contextmanager
    def _errors(self, where: str):
        redis = _redis()
        if self._closed:
            raise StoreError(f"{where}: {self.url} is closed")
        try:
            yield
        except self._errors_redis as e:
            raise StoreError(f"{where}: cannot reach Redis at {self.url} ({type(e).__name__}: {e}); "
                             f"gave up after the configured retries") from None
        except redis.exceptions.WatchError:
            raise
        except redis.exceptions.RedisError as e:
            raise StoreError(f"{where}: Redis at {self.url} failed: {type(e).__name__}: {e}") from None

    def _check_writable(self, where: str) -> None:
        if self.readonly:
            raise StoreError(f"{where}: {self.url} was opened readonly")

    def _vid(self, name: str) -> tuple[int | None, bool]:
        vid, pub = self._r.hget(self._k("vid"), name), self._r.hexists(self._k("published"), name)
        return (None if vid is None else int(vid)), bool(pub)

    def _published_names(self) -> list[str]:
        pub = self._r.hgetall(self._k("published"))
        if not pub:
            return []
        names = [n.decode() for n in pub]
        infos = self._r.mget([self._k("info", int(pub[n.encode()])) for n in names])
        seqs = [json.loads(i).get("seq", 0) if i else 0 for i in infos]
        return [n for _, n in sorted(zip(seqs, names))]

    # --- writing -----------------------------------------------------------------------------------------------
    def _stage(self, name: str) -> None:
        where = f"stage({name!r})"
        self._check_writable(where)
        t = now_iso()
        with self._errors(where):
            vid = self._stage_script(args=[self._p, name, dumps({"name": name, "created": t}), t])
        if int(vid) < 0:
            raise StoreError(f"{where}: version {name!r} is published and immutable; stage a new name")

    def _staged_vid(self, name: str, where: str) -> int:
        vid, pub = self._vid(name)
        if vid is None:
            raise StoreError(f"{where}: version {name!r} is not staged in {self.url} (call store.stage first)")
        if pub:
            raise StoreError(f"{where}: version {name!r} is published and immutable")
        return vid

    def _write_part(self, name: str, part: int, ids: np.ndarray, buf: np.ndarray, layout: RecordLayout) -> PartInfo:
        where = f"write_part(version {name!r}, part {part})"
        self._check_writable(where)
        r = self._r
        with self._errors(where):
            vid = self._staged_vid(name, where)
            lkey = self._k("layout", vid)
            r.set(lkey, dumps(layout.to_json()), nx=True)
            stored = RecordLayout.from_json(json.loads(r.get(lkey)))
            if stored != layout:
                raise StoreError(f"{where}: records are {layout.dtype} {list(layout.shape)} but this version's parts "
                                 f"are {stored.dtype} {list(stored.shape)}")
            base = self._k("r", vid, b"")
            for s in range(0, len(ids), 1024):  # checked before anything changes: a refused part leaves no trace
                chunk = ids[s:s + 1024].tolist()
                for uid, prev in zip(chunk, r.mget([base + str(u).encode() for u in chunk])):
                    if prev is not None and record_part(prev) != part:
                        raise StoreError(f"{where}: user {uid} is already in part "
                                         f"{record_part(prev)} of this version")
            pids_key = self._k("pids", vid, part)
            # The part stops counting as written before anything of it changes.
            r.hdel(self._k("parts", vid), part)
            r.sadd(self._k("partset", vid), part)
            old = r.get(pids_key)
            if old:
                self._delete_records(vid, np.frombuffer(old, dtype="<i8"))
            r.set(pids_key, ids.astype("<i8", copy=False).tobytes())
            sums = np.empty(len(ids), dtype="<u8")
            for s in range(0, len(ids), _CHUNK):
                chunk = ids[s:s + _CHUNK]
                keys = [base + str(u).encode() for u in chunk.tolist()]
                values, sums[s:s + len(chunk)] = encode_records(chunk, buf[s:s + _CHUNK], part)
                pipe = r.pipeline(transaction=False)
                for k, v in zip(keys, values):
                    pipe.set(k, v)
                pipe.execute()
                if s == 0:
                    _crash_point("write_part:records")
            result = PartInfo(part, len(ids), part_checksum(ids, sums))
            r.hset(self._k("parts", vid), part, dumps({"count": result.count, "checksum": result.checksum}))
            r.set(self._k("updated", vid), now_iso())
        return result

    def _delete_records(self, vid: int, ids: np.ndarray, crash_step: str | None = None) -> None:
        base = self._k("r", vid, b"")
        for s in range(0, len(ids), 1024):
            self._r.delete(*[base + str(u).encode() for u in ids[s:s + 1024].tolist()])
            if s == 0 and crash_step:
                _crash_point(crash_step)

    def _check_parts(self, conn, vid: int, parts: list[int], written: dict[int, dict], nbytes: int,
                     bad_records: list | None = None, bad_parts: list | None = None) -> list[str]:
        problems = []
        base = self._k("r", vid, b"")
        for p in parts:
            ids = np.frombuffer(conn.get(self._k("pids", vid, p)) or b"", dtype="<i8")
            values: list = []
            for s in range(0, len(ids), 1024):
                values += conn.mget([base + str(u).encode() for u in ids[s:s + 1024].tolist()])
            bad, problem = check_part_records(p, written[p], ids, values, nbytes)
            if bad_records is not None:
                bad_records.extend(bad)
            if problem:
                if bad_parts is not None:
                    bad_parts.append((p, problem))
                problems.append(f"part {p}: {problem}" + (f" (user {bad[0][0]}: {bad[0][1]})" if bad else ""))
        return problems

    def _publish(self, name: str, manifest: dict, expected: dict[int, PartInfo | None] | None) -> dict:
        redis = _redis()
        where = f"publish({name!r})"
        self._check_writable(where)
        for _ in range(_WATCH_TRIES):
            with self._errors(where), self._r.pipeline() as pipe:
                try:
                    pipe.watch(self._k("published"), self._k("vid"))
                    vid = pipe.hget(self._k("vid"), name)
                    if vid is None:
                        raise StoreError(f"{where}: version {name!r} was never staged in {self.url}")
                    if pipe.hexists(self._k("published"), name):
                        raise StoreError(f"{where}: version {name!r} is already published (published versions are "
                                         f"immutable)")
                    vid = int(vid)
                    pipe.watch(self._k("parts", vid), self._k("partset", vid))
                    written = {int(k): json.loads(v) for k, v in pipe.hgetall(self._k("parts", vid)).items()}
                    started = {int(p) for p in pipe.smembers(self._k("partset", vid))}
                    unfinished = sorted(started - set(written))
                    if unfinished:
                        raise StoreError(f"{where}: parts {unfinished} were started but did not finish (a killed "
                                         f"worker?); write them again before publishing")
                    parts = select_parts(name, written, expected)
                    layout = RecordLayout.from_json(json.loads(pipe.get(self._k("layout", vid))))
                    layout = layout.with_int4(manifest, name)
                    problems = self._check_parts(pipe, vid, parts, written, layout.nbytes)
                    if problems:
                        cur = pipe.get(self._k("current"))
                        raise StoreError(f"{where}: refused, {cur.decode() if cur else 'no version'} stays current: "
                                         + "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else ""))
                    _crash_point("publish:verified")
                    seq = int(self._r.incr(self._k("seq")))
                    info = json.loads(pipe.get(self._k("info", vid)))
                    out = store_manifest(name, manifest, layout, written, parts, info["created"])
                    info.update(manifest=out, seq=seq, published=out["store"]["published"], layout=layout.to_json())
                    pipe.multi()
                    pipe.set(self._k("info", vid), dumps(info))
                    pipe.hset(self._k("published"), name, vid)
                    pipe.set(self._k("current"), name)
                    _crash_point("publish:switching")
                    pipe.execute()
                    return out
                except redis.exceptions.WatchError:
                    continue
        raise StoreError(f"{where}: the version's parts kept changing while it was verified; publish again")

    def set_current(self, version: str) -> None:
        redis = _redis()
        where = f"set_current({version!r})"
        self._check_writable(where)
        with self._errors(where), self._r.pipeline() as pipe:
            try:
                pipe.watch(self._k("published"))
                if not pipe.hexists(self._k("published"), version):
                    raise unknown_version(version, self._published_names(), self.url)
                pipe.multi()
                pipe.set(self._k("current"), version)
                pipe.execute()
            except redis.exceptions.WatchError:
                raise StoreError(f"{where}: versions changed meanwhile; try again") from None

    # --- reading -----------------------------------------------------------------------------------------------
    def _layout(self, vid: int) -> RecordLayout:
        layout = self._layouts.get(vid)
        if layout is None:
            info = json.loads(self._r.get(self._k("info", vid)))
            layout = self._layouts[vid] = RecordLayout.from_json(info["layout"])
        return layout

    def _read(self, ids: np.ndarray, version: str | None, decode) -> str | None:
        # Resolve once, then read the records in one MULTI/EXEC that re-reads the version's vid: a version is
        # unpublished (gc) before its records are deleted, so a matching vid means every record is of that version.
        # (One Lua script doing both was 3x slower than MGET for 1,000 records: it copies every value twice.)
        with self._errors("get"):
            for _ in range(_WATCH_TRIES):
                name, vid = self._resolve_script(args=[self._p, version or ""])
                if name is None:
                    return None
                name = name.decode()
                if vid is None:
                    raise unknown_version(name, self._published_names(), self.url)
                base = self._k("r", int(vid), b"")
                pipe = self._r.pipeline(transaction=True)
                pipe.hget(self._k("published"), name)
                if len(ids):
                    pipe.mget([base + b"%d" % u for u in ids.tolist()])
                got = pipe.execute()
                if got[0] != vid:  # removed by a gc meanwhile: resolve again
                    continue
                decode(self._layout(int(vid)), got[1] if len(ids) else [])
                return name
        raise StoreError(f"get: versions of {self.url} kept changing during the read; try again")

    def _published_layout(self, name: str) -> RecordLayout:
        with self._errors("lookup"):
            vid = self._r.hget(self._k("published"), name)
            if vid is None:
                raise unknown_version(name, self._published_names(), self.url)
            return self._layout(int(vid))

    def current(self) -> str | None:
        with self._errors("current"):
            cur = self._r.get(self._k("current"))
        return None if cur is None else cur.decode()

    def versions(self) -> list[VersionInfo]:
        with self._errors("versions"):
            vids = {n.decode(): int(v) for n, v in self._r.hgetall(self._k("vid")).items()}
            pub = {n.decode() for n in self._r.hkeys(self._k("published"))}
            cur = self.current()
            rows = []
            for name, vid in vids.items():
                pipe = self._r.pipeline(transaction=False)
                pipe.get(self._k("info", vid))
                pipe.hvals(self._k("parts", vid))
                pipe.get(self._k("layout", vid))
                info, parts, layout = pipe.execute()
                if info is None:  # removed by a gc meanwhile
                    continue
                info = json.loads(info)
                users = sum(json.loads(p)["count"] for p in parts)
                nbytes = users * RecordLayout.from_json(json.loads(layout)).nbytes if layout else 0
                published = name in pub
                order = (0, info.get("seq", 0), "") if published else (1, 0, info["created"])
                rows.append((order, VersionInfo(name, "published" if published else "staged", name == cur, users,
                                                len(parts), nbytes, info["created"], info.get("published"))))
        return [r for _, r in sorted(rows, key=lambda x: x[0])]

    def manifest(self, version: str | None = None) -> dict:
        with self._errors("manifest"):
            if version is None:
                version = self.current()
                if version is None:
                    raise StoreError(f"manifest: {self.url} has no current version")
            vid = self._r.hget(self._k("published"), version)
            if vid is None:
                raise unknown_version(version, self._published_names(), self.url)
            return json.loads(self._r.get(self._k("info", int(vid))))["manifest"]

    # --- maintenance -------------------------------------------------------------------------------------------
    def verify(self, version: str | None = None) -> VerifyReport:
        with self._errors("verify"):
            if version is None:
                version = self.current()
                if version is None:
                    raise StoreError(f"verify: {self.url} has no current version")
            vid, pub = self._vid(version)
            if vid is None:
                raise StoreError(f"verify: version {version!r} is not in {self.url} "
                                 f"(known: {', '.join(v.name for v in self.versions()) or 'none'})")
            written = {int(k): json.loads(v) for k, v in self._r.hgetall(self._k("parts", vid)).items()}
            started = {int(p) for p in self._r.smembers(self._k("partset", vid))}
            bad_records: list = []
            bad_parts: list = [(p, "started but not finished") for p in sorted(started - set(written))]
            layout = self._r.get(self._k("layout", vid))
            if layout is not None:
                nbytes = RecordLayout.from_json(json.loads(layout)).nbytes
                self._check_parts(self._r, vid, sorted(written), written, nbytes, bad_records, bad_parts)
            if pub:
                listed = {int(p) for p in json.loads(self._r.get(self._k("info", vid)))["manifest"]["store"]["parts"]}
                if listed != set(written):
                    bad_parts.append((-1, f"parts written {sorted(written)} != parts published {sorted(listed)}"))
        return VerifyReport(version, sum(p["count"] for p in written.values()), len(written), bad_records, bad_parts)

    def _purge(self, vid: int, crash: bool) -> None:
        """Deletes everything of ``vid`` (already unreachable by name); resumable: ``P:trash`` remembers it."""
        r = self._r
        for p in sorted(int(x) for x in r.smembers(self._k("partset", vid))):
            blob = r.get(self._k("pids", vid, p))
            if blob:
                self._delete_records(vid, np.frombuffer(blob, dtype="<i8"), "gc:deleting" if crash else None)
                crash = False
            r.delete(self._k("pids", vid, p))
        r.delete(self._k("parts", vid), self._k("partset", vid), self._k("layout", vid), self._k("updated", vid),
                 self._k("info", vid))
        r.srem(self._k("trash"), vid)

    def _gc(self, keep_last: int, staged_older_than: float) -> list[str]:
        redis = _redis()
        self._check_writable("gc")
        removed = []
        with self._errors("gc"):
            for vid in sorted(int(v) for v in self._r.smembers(self._k("trash"))):  # a gc that was killed
                self._purge(vid, crash=False)
            published = self._published_names()
            keep = newest(published, keep_last)
            vids = {n.decode(): int(v) for n, v in self._r.hgetall(self._k("vid")).items()}
            doomed = []
            for name, vid in vids.items():
                if name in published:
                    if name not in keep:
                        doomed.append((name, vid))
                else:
                    t = self._r.get(self._k("updated", vid))
                    if t is None or iso_age_seconds(t.decode()) >= staged_older_than:
                        doomed.append((name, vid))
            first = True
            for name, vid in doomed:
                with self._r.pipeline() as pipe:
                    try:
                        pipe.watch(self._k("current"), self._k("vid"))
                        cur = pipe.get(self._k("current"))
                        if cur is not None and cur.decode() == name:
                            continue  # never the current one, even if it became current meanwhile
                        pipe.multi()
                        pipe.hdel(self._k("vid"), name)
                        pipe.hdel(self._k("published"), name)
                        pipe.sadd(self._k("trash"), vid)
                        pipe.execute()
                    except redis.exceptions.WatchError:
                        continue
                self._purge(vid, crash=first)
                first = False
                removed.append(name)
        return removed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._r.close()
