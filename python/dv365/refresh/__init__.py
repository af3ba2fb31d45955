"""The recurring job (``dv365 refresh``; paper 3.3, appendix B): new data -> warm-started training -> export ->
publish -> a stability report (per-user cosine similarity between versions, paper figure 4, and the NE).

- :func:`refresh` — one idempotent, resumable cycle (:mod:`dv365.refresh.cycle`)
- :func:`cosine_similarities` / :func:`summarize` / :func:`plot_histogram` — the stability report

Names resolve on first use, so that ``dv365 --help`` (which imports the command module) loads no torch.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "STAGES": "cycle", "RefreshError": "cycle", "refresh": "cycle",
    "cosine_similarities": "stability", "plot_histogram": "stability", "summarize": "stability",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'dv365.refresh' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
