"""Versioned embedding store (paper 2.4-2.5; docs/store.md): exported user embeddings, int4 rows per user,
written in parts, published atomically, served by user id.

- :func:`open_store` — ``"path/to/dir"`` or ``"lmdb:///abs/path"`` (embedded LMDB),
  ``"redis://host:port/db?prefix=p"`` (Redis)
- :class:`EmbeddingStore` — ``stage`` / ``publish`` / ``get`` / ``lookup`` / ``versions`` / ``gc`` / ``verify``
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..lazy import lazy_names

if TYPE_CHECKING:
    from .base import EmbeddingStore

# loaded on first use (numpy, xxhash), so that ``dv365 --help`` imports neither
_BASE_NAMES = ("EmbeddingStore", "LookupResult", "PartInfo", "RecordLayout", "StagedVersion", "StoreError",
               "VerifyReport", "VersionInfo")
__getattr__, __dir__ = lazy_names(__name__, dict.fromkeys(_BASE_NAMES, "base"))


def open_store(url: str, *, create: bool = False, readonly: bool = False, on_corrupt: str = "mask",
               **options: Any) -> EmbeddingStore:
    """Opens the store at ``url``: a directory path or ``lmdb:///abs/path`` (LMDB; ``map_size``,
    ``max_map_size`` options), or ``redis://[:password@]host:port/db?prefix=dv365`` / ``rediss://`` /
    ``unix:///path.sock?prefix=...`` (Redis; ``timeout`` seconds per socket operation, ``retries``).
    ``create=True`` makes an empty store where there is none; otherwise a missing store is a :class:`StoreError`.
    ``on_corrupt``: ``"mask"`` (default) serves a corrupted record as not found (``corrupt=True``), ``"raise"``
    raises."""
    from .base import StoreError

    if not isinstance(url, str) or not url:
        raise StoreError(f"open_store: url must be a non-empty string, got {url!r}")
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis_store import RedisStore

        return RedisStore(url, create=create, readonly=readonly, on_corrupt=on_corrupt, **options)
    if "://" in url and not url.startswith("lmdb://"):
        raise StoreError(f"open_store: unknown store scheme in {url!r} (a path, lmdb://, redis://, rediss://, unix://)")
    from .lmdb_store import LMDBStore

    path = url[len("lmdb://"):] if url.startswith("lmdb://") else url
    return LMDBStore(path, create=create, readonly=readonly, on_corrupt=on_corrupt, **options)


__all__ = [
    "EmbeddingStore", "LookupResult", "PartInfo", "RecordLayout", "StagedVersion", "StoreError", "VerifyReport",
    "VersionInfo", "open_store",
]
