"""The model's config: plain dataclasses that read and write as YAML (``to_dict`` / ``from_dict``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..configs import from_dict, to_dict
from .registry import TOWERS, suggest, tower_arguments


class ModelConfigError(ValueError):
    """A model config value that does not fit (unknown tower, tower argument, bad size); ``from_dict`` reports it
    under the section's dotted path (``model.tower: TowerConfig.name: unknown tower 'FZA' (did you mean 'FSA'?)``)."""


def _bad(obj: Any, key: str, detail: str) -> ModelConfigError:
    return ModelConfigError(f"{type(obj).__name__}.{key}: {detail}")


def _hint(key: str, known) -> str:
    close = suggest(key, known)
    return f" (did you mean {close!r}?)" if close else f" (known: {', '.join(sorted(known))})"


@dataclasses.dataclass
class TowerConfig:
    """The user tower: ``name`` from ``TOWERS`` (paper table 1), ``args`` its keyword arguments (e.g.
    ``{"blocks": 3, "strides": [1, 2, 2], "lce_tokens": 9}`` for FSA)."""

    name: str = "FSA"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in TOWERS:
            raise _bad(self, "name", f"unknown tower {self.name!r}{_hint(str(self.name), TOWERS)}")
        if not isinstance(self.args, Mapping):
            raise _bad(self, "args", f"must be a mapping, got {self.args!r}")
        accepted = tower_arguments(TOWERS[self.name])
        for key in self.args:
            if key not in accepted:
                raise _bad(self, f"args.{key}", f"tower {self.name!r} has no such argument{_hint(str(key), accepted)}")


@dataclasses.dataclass
class BackboneConfig:
    """The DLRM backbone (paper 2.3.1): E = ``embedding_dim``, hidden widths of the bottom and top MLPs,
    ``user_buckets`` rows of the hashed user-id embedding (``user_id % user_buckets``; 0 = no user-id feature)."""

    embedding_dim: int = 16
    bottom_mlp: tuple[int, ...] = (64,)
    top_mlp: tuple[int, ...] = (128, 64)
    user_buckets: int = 100_003
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.bottom_mlp, self.top_mlp = tuple(self.bottom_mlp), tuple(self.top_mlp)
        if self.embedding_dim < 1:
            raise _bad(self, "embedding_dim", f"must be >= 1, got {self.embedding_dim}")
        for which in ("bottom_mlp", "top_mlp"):
            if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in getattr(self, which)):
                raise _bad(self, which, f"must be positive integers, got {list(getattr(self, which))}")
        if self.user_buckets < 0:
            raise _bad(self, "user_buckets", f"must be >= 0 (0 = no user-id feature), got {self.user_buckets}")
        if not 0.0 <= self.dropout < 1.0:
            raise _bad(self, "dropout", f"must lie in [0, 1), got {self.dropout}")


@dataclasses.dataclass
class ModelConfig:
    """The whole :class:`~dv365.models.DV365Model`: token dim D, tower, backbone, sparse embedding gradients,
    and ``watch_time_weight`` = ``a`` in the loss ``L = Σ_k BCE_k + a · MSE`` (paper eq. 8)."""

    dim: int = 32
    tower: TowerConfig = dataclasses.field(default_factory=TowerConfig)
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    sparse: bool = True
    watch_time_weight: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise _bad(self, "dim", f"must be an integer >= 1, got {self.dim!r}")
        if not self.watch_time_weight >= 0:
            raise _bad(self, "watch_time_weight", f"must be >= 0, got {self.watch_time_weight}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """The config of plain data (as ``to_dict`` writes it); missing keys keep their defaults, an unknown key
        is a :class:`~dv365.configs.ConfigError` naming its dotted path and the closest known key."""
        return from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (dicts, lists, numbers, strings) for YAML."""
        return to_dict(self)
