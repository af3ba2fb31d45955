"""Export of user embeddings to a versioned store (``dv365 export``; paper 2.4).

- :func:`export` — η over every user at a cut-off, int4 rows, parts written by one or many workers, one
  atomic publish with a manifest; resumable after a kill; incremental with ``since``
- :func:`users_to_reexport` / :func:`boundary_offsets` — which users an incremental export recomputes

Names resolve on first use, so that ``dv365 --help`` (which imports the command module) loads no torch.
"""

from __future__ import annotations

from ..lazy import lazy_names

_NAMES = {
    "DEFAULT_PART_SIZE": "exporter", "FORMAT": "exporter", "ExportError": "exporter", "ExportResult": "exporter",
    "default_version_name": "exporter", "export": "exporter", "part_bounds": "exporter", "resolve_cutoff": "exporter",
    "worker_parts": "exporter", "boundary_offsets": "incremental", "users_to_reexport": "incremental",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_names(__name__, _NAMES)
