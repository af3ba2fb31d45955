"""Embedding stability between two published versions (paper appendix B, figure 4): the distribution over users
of the cosine similarity of their dequantized embeddings, flattened to ``N_out * D`` values."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
BINS = 40  # over [-1, 1]: 0.05 wide


def cosine_similarities(store, old: str, new: str, batch: int = 1024) -> tuple[np.ndarray, dict[str, int]]:
    """Per-user cosine similarity (float64) of versions ``old`` and ``new`` over the users present in both, in
    user-id order, and the user counts (``compared``, ``only_old``, ``only_new``).

    Users are the ids ``[0, users)`` of each version's manifest (an export writes every user of its snapshot).
    A user whose embedding is all zeros in either version has similarity 0 (torch's convention)."""
    m_old, m_new = store.manifest(old), store.manifest(new)
    for key in ("num_tokens", "dim"):
        if m_old.get(key) != m_new.get(key):
            raise ValueError(f"stability: versions {old!r} and {new!r} have different {key} "
                             f"({m_old.get(key)} vs {m_new.get(key)}); their embeddings cannot be compared")
    n = max(int(m_old["store"]["users"]), int(m_new["store"]["users"]))
    sims = [np.empty(0)]
    counts = {"compared": 0, "only_old": 0, "only_new": 0}
    for lo in range(0, n, batch):
        ids = torch.arange(lo, min(n, lo + batch))
        a, b = store.lookup(ids, version=old), store.lookup(ids, version=new)
        both = a.found & b.found
        counts["compared"] += int(both.sum())
        counts["only_old"] += int((a.found & ~b.found).sum())
        counts["only_new"] += int((b.found & ~a.found).sum())
        x, y = a.embeddings[both].flatten(1).double(), b.embeddings[both].flatten(1).double()
        sims.append(torch.nn.functional.cosine_similarity(x, y, dim=1, eps=1e-30).numpy())
    return np.concatenate(sims), counts


def summarize(sims: np.ndarray) -> dict[str, Any]:
    """Mean, std, min, max, quantiles and histogram counts (``BINS`` bins over [-1, 1]) of the similarities."""
    edges = np.linspace(-1.0, 1.0, BINS + 1)
    counts, _ = np.histogram(np.clip(sims, -1.0, 1.0), bins=edges)
    if sims.size == 0:
        return {"users": 0, "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}
    return {
        "users": int(sims.size),
        "mean": float(sims.mean()), "std": float(sims.std()), "min": float(sims.min()), "max": float(sims.max()),
        "quantiles": {f"p{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, np.quantile(sims, QUANTILES))},
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def plot_histogram(summary: dict[str, Any], path: str | os.PathLike, title: str) -> None:
    """The histogram of :func:`summarize` as a PNG (paper figure 4), written atomically."""
    from ..files import pyplot, save_figure

    plt = pyplot()
    edges = np.asarray(summary["histogram"]["edges"])
    counts = np.asarray(summary["histogram"]["counts"])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4c72b0", edgecolor="white")
    if summary.get("users"):
        ax.axvline(summary["mean"], color="#c44e52", linestyle="--", label=f"mean {summary['mean']:.3f}")
        ax.legend(loc="upper left")
    ax.set_xlim(-1, 1)
    ax.set_xlabel("cosine similarity of a user's embeddings (previous vs new version)")
    ax.set_ylabel("users")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
