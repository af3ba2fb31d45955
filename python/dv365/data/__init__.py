"""UniTi data: Parquet storage, loader, synthetic generator, ingestion (issue 5; DESIGN.md 1.1).

- :func:`write_dataset` / :func:`open_dataset` — sharded Parquet with a manifest (``dv365.data.parquet``)
- :class:`Loader` — ``Batch(explicit, implicit, examples)``, histories cut ``gap`` before each request; resumable,
  rank-sharded for data-parallel training
- :class:`UserLoader` — ``UserBatch`` per user at an export cut-off; :func:`users_with_new_events` for refreshes
- :func:`generate` — synthetic users with a long-history signal (``dv365.data.synth``)
- :func:`ingest` — CSV / Parquet interaction logs to a dataset (``dv365.data.ingest``)
"""


from .ingest import IngestReport, ingest
from .loader import Batch, Examples, Loader, UserBatch, UserLoader, dataset_fingerprint, users_with_new_events
from .parquet import Dataset, Shard, open_dataset, write_dataset
from .schema import SCHEMA_VERSION, TASKS, DataError
from .synth import SynthConfig, generate

__all__ = [
    "SCHEMA_VERSION", "TASKS", "Batch", "DataError", "Dataset", "Examples", "IngestReport", "Loader", "Shard",
    "SynthConfig", "UserBatch", "UserLoader", "dataset_fingerprint", "generate", "ingest", "open_dataset",
    "users_with_new_events", "write_dataset",
]
