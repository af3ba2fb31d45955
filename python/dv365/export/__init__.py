"""Export of user embeddings to a versioned store (``dv365 export``; paper 2.4).

- :func:`export` — η over every user at a cut-off, int4 rows, parts written by one or many workers, one
  atomic publish with a manifest; resumable after a kill; incremental with ``since``
- :func:`users_to_reexport` / :func:`boundary_offsets` — which users an incremental export recomputes
"""

from .exporter import (DEFAULT_PART_SIZE, FORMAT, ExportError, ExportResult, default_version_name, export,
                       part_bounds, resolve_cutoff, worker_parts)
from .incremental import boundary_offsets, users_to_reexport

__all__ = [
    "DEFAULT_PART_SIZE", "FORMAT", "ExportError", "ExportResult", "boundary_offsets", "default_version_name",
    "export", "part_bounds", "resolve_cutoff", "users_to_reexport", "worker_parts",
]
