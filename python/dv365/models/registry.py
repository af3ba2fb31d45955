"""The user towers by their paper table-1 names, and :func:`build_tower`."""

from __future__ import annotations

import difflib

from .fsa import FunnelSummarization
from .towers import (
    LinearCompression,
    MLPDimWise,
    MLPTokenWise,
    PassThrough,
    TransformerDimWise,
    TransformerTokenWise,
    UserTower,
    tower_arguments,
)

TOWERS: dict[str, type[UserTower]] = {
    cls.name: cls
    for cls in (
        PassThrough,
        LinearCompression,
        MLPDimWise,
        MLPTokenWise,
        TransformerDimWise,
        TransformerTokenWise,
        FunnelSummarization,
    )
}


def suggest(name: str, known) -> str | None:
    """The known name closest to ``name`` (case-insensitive first: 'fsa' -> 'FSA'), or None."""
    known = list(known)
    same = [k for k in known if k.lower() == str(name).lower()]
    close = same or difflib.get_close_matches(str(name), known, n=1)
    return close[0] if close else None


def build_tower(name: str, num_tokens: int, dim: int, **kwargs) -> UserTower:
    """The tower ``TOWERS[name]`` for ``num_tokens`` pooled tokens of ``dim``, with its keyword arguments."""
    if name not in TOWERS:
        close = suggest(name, TOWERS)
        hint = f" (did you mean {close!r}?)" if close else ""
        raise ValueError(f"build_tower: unknown tower {name!r}{hint}; the towers are {list(TOWERS)}")
    accepted = tower_arguments(TOWERS[name])
    for key in kwargs:
        if key not in accepted:
            raise ValueError(f"build_tower: tower {name!r} has no argument {key!r}; it accepts {list(accepted)}")
    return TOWERS[name](num_tokens, dim, **kwargs)


__all__ = ["TOWERS", "build_tower", "tower_arguments"]
