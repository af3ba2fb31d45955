"""UniTi data: Parquet storage, loader, synthetic generator, ingestion (issue 5; DESIGN.md 1.1).

- :func:`write_dataset` / :func:`open_dataset` — sharded Parquet with a manifest (``dv365.data.parquet``)
- :class:`Loader` — ``Batch(explicit, implicit, examples)``, histories cut ``gap`` before each request
- :func:`generate` — synthetic users with a long-history signal (``dv365.data.synth``)
- :func:`ingest` — CSV / Parquet interaction logs to a dataset (``dv365.data.ingest``)
"""


from .ingest import IngestReport, ingest
from .loader import Batch, Examples, Loader
from .parquet import Dataset, Shard, open_dataset, write_dataset
from .schema import SCHEMA_VERSION, TASKS, DataError
from .synth import SynthConfig, generate

__all__ = [
    "SCHEMA_VERSION", "TASKS", "Batch", "DataError", "Dataset", "Examples", "IngestReport", "Loader", "Shard",
    "SynthConfig", "generate", "ingest", "open_dataset", "write_dataset",
]
