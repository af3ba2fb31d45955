"""The recurring job (``dv365 refresh``; paper 3.3, appendix B): new data -> warm-started training -> export ->
publish -> a stability report (per-user cosine similarity between versions, paper figure 4, and the NE).

- :func:`refresh` — one idempotent, resumable cycle (:mod:`dv365.refresh.cycle`)
- :func:`cosine_similarities` / :func:`summarize` / :func:`plot_histogram` — the stability report

Names resolve on first use, so that ``dv365 --help`` (which imports the command module) loads no torch.
"""

from __future__ import annotations

from ..lazy import lazy_names

_NAMES = {
    "STAGES": "cycle", "RefreshError": "cycle", "refresh": "cycle", "renumbered": "cycle",
    "cosine_similarities": "stability", "plot_histogram": "stability", "summarize": "stability",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_names(__name__, _NAMES)
