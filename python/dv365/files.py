"""Files that a killed job must never leave half-written: write a temporary file beside the target, fsync it,
rename it into place (readers see the old file or the new one), and figures the same way."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _plain(x: Any) -> Any:
    """JSON for the tensors and numpy values inside metrics."""
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON-serializable: {type(x).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any, sort_keys: bool = False) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=sort_keys, default=_plain)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on servers), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> None:
    """Save ``fig`` as ``path`` (PNG by its suffix) atomically and close it."""
    path = Path(path)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp)
    pyplot().close(fig)
    os.replace(tmp, path)
