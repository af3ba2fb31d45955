"""The model's config: plain dataclasses that read and write as YAML (``to_dict`` / ``from_dict``)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from .registry import TOWERS, suggest, tower_arguments


class ModelConfigError(ValueError):
    """A model config key or value that does not fit the config's dataclasses.

    ``key`` / ``detail``: the field of the dataclass that raised it and the bare message, so that
    :meth:`ModelConfig.from_dict` can name the key by its dotted path.
    """

    def __init__(self, message: str, key: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.key, self.detail = key, detail or message


def _bad(obj: Any, key: str, detail: str) -> ModelConfigError:
    return ModelConfigError(f"{type(obj).__name__}.{key}: {detail}", key=key, detail=detail)


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
        """The config of plain data (as ``to_dict`` writes it); unknown keys are errors naming their dotted path."""
        return _from_dict(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (dicts, lists, numbers, strings) for YAML."""
        return _to_dict(self)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else _from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
            raise ModelConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ModelConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool and not isinstance(value, bool):
        raise ModelConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ModelConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModelConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str and not isinstance(value, str):
        raise ModelConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ModelConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ModelConfigError(f"config key {path!r} is unknown{_hint(str(key), fields)}")
        kwargs[key] = _coerce(hints[key], value, path)
    try:
        return cls(**kwargs)
    except ModelConfigError as e:
        if e.key is None:
            raise
        path = f"{where}.{e.key}" if where else e.key
        raise ModelConfigError(f"config key {path!r}: {e.detail}", key=path, detail=e.detail) from None


def _to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: _to_dict(v) for k, v in obj.items()}
    return obj
