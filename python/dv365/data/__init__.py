"""UniTi data: Parquet storage, loader, synthetic generator, ingestion (docs/data.md; docs/design.md#uniti-timelines).

- :func:`write_dataset` / :func:`open_dataset` — sharded Parquet with a manifest (``dv365.data.parquet``)
- :class:`Loader` — ``Batch(explicit, implicit, examples)``, histories cut ``gap`` before each request; resumable,
  rank-sharded; :class:`UserLoader` — one row per user at an export cut-off (``dv365.data.loader``), both reading
  the shards' columnar cache (``dv365.data.cache``)
- :func:`generate` — synthetic users with a long-history signal (``dv365.data.synth``)
- :func:`ingest` — CSV / Parquet interaction logs to a dataset (``dv365.data.ingestion``; the module is not named
  ``ingest``, so that importing it never rebinds this package's ``ingest`` from the function to the module)

The names are imported on first use (PEP 562), so that ``dv365.data.commands`` (the CLI) loads without torch.
"""

from __future__ import annotations

from ..lazy import lazy_names

_EXPORTS = {
    "IngestReport": "ingestion", "IngestWarning": "ingestion", "ingest": "ingestion",
    "Batch": "loader", "Examples": "loader", "Loader": "loader", "UserBatch": "loader", "UserLoader": "loader",
    "dataset_fingerprint": "loader", "users_with_new_events": "loader",
    "Dataset": "parquet", "Shard": "parquet", "open_dataset": "parquet", "write_dataset": "parquet",
    "SCHEMA_VERSION": "schema", "TASKS": "schema", "DataError": "schema",
    "SynthConfig": "synth", "generate": "synth",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
