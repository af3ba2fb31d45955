"""The recurring job (``dv365 refresh``; paper 3.3, appendix B): new data -> warm-started training -> export ->
publish -> a stability report (per-user cosine similarity between versions, paper figure 4, and the NE).

- :func:`refresh` — one idempotent, resumable cycle (:mod:`dv365.refresh.cycle`)
- :func:`cosine_similarities` / :func:`summarize` / :func:`plot_histogram` — the stability report
"""

from .cycle import STAGES, RefreshError, refresh
from .stability import cosine_similarities, plot_histogram, summarize

__all__ = ["STAGES", "RefreshError", "cosine_similarities", "plot_histogram", "refresh", "summarize"]
