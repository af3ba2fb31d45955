"""UniTi timeline batches (paper section 2.1; docs/design.md#uniti-timelines).

A batch of B users' explicit or implicit timelines, struct-of-arrays and jagged by ``offsets``:

- ``offsets`` int64 ``[B + 1]``
- ``ids`` int64 ``[3, N]``: rows ``media_id``, ``author_id``, ``topic_id`` (field-major, so the rows are
  exactly a KeyedJaggedTensor's ``values`` and convert without a copy)
- ``ts`` int64 ``[N]``: seconds, ascending within each user
- ``cats`` int8 ``[C, N]``: explicit ``action_type, media_type, surface``; implicit ``media_type, surface``
- ``floats`` float32 ``[F, N]``: implicit ``video_duration, dwell_time`` (seconds); explicit has none (F = 0)

Every row of ``ids``, ``cats`` and ``floats`` is one contiguous 1-D column; :meth:`column` names them.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

EXPLICIT = "explicit"
IMPLICIT = "implicit"
KINDS = (EXPLICIT, IMPLICIT)

ID_FIELDS = ("media_id", "author_id", "topic_id")
CAT_FIELDS = {EXPLICIT: ("action_type", "media_type", "surface"), IMPLICIT: ("media_type", "surface")}
FLOAT_FIELDS = {EXPLICIT: (), IMPLICIT: ("video_duration", "dwell_time")}

# Vocabularies of the categorical fields; a value is the index of its name.
ACTION_TYPES = ("like", "comment", "reshare", "save", "follow", "profile_visit", "external_share")
MEDIA_TYPES = ("video", "photo", "carousel")
SURFACES = ("reels", "feed", "explore", "stories")
VOCABULARIES = {"action_type": ACTION_TYPES, "media_type": MEDIA_TYPES, "surface": SURFACES}
MAX_CAT_VALUE = 63  # categorical values index a 64-bit mask in the slice program


class TimelineError(ValueError):
    """A timeline batch that breaks the layout contract."""


@dataclasses.dataclass(frozen=True)
class TimelineBatch:
    kind: Literal["explicit", "implicit"]
    offsets: torch.Tensor
    ids: torch.Tensor
    ts: torch.Tensor
    cats: torch.Tensor
    floats: torch.Tensor

    def __post_init__(self) -> None:
        self.validate()

    # construction -------------------------------------------------------------------------------
    @classmethod
    def from_columns(cls, kind: str, offsets: torch.Tensor, **columns: torch.Tensor) -> TimelineBatch:
        """Build from one 1-D tensor per field name (``ts``, the id, categorical and float fields)."""
        if kind not in KINDS:
            raise TimelineError(f"TimelineBatch: kind must be one of {KINDS}, got {kind!r}")
        expected = {"ts", *ID_FIELDS, *CAT_FIELDS[kind], *FLOAT_FIELDS[kind]}
        missing = sorted(expected - columns.keys())
        extra = sorted(columns.keys() - expected)
        if missing or extra:
            raise TimelineError(f"TimelineBatch({kind}): missing columns {missing}, unknown columns {extra}")
        n = columns["ts"].numel()

        def stack(names: tuple[str, ...], dtype: torch.dtype) -> torch.Tensor:
            if not names:
                return torch.empty(0, n, dtype=dtype, device=columns["ts"].device)
            for name in names:
                col = columns[name]
                if col.dtype.is_floating_point != dtype.is_floating_point:
                    raise TimelineError(f"TimelineBatch({kind}): column {name} must be {dtype}, got {col.dtype}")
                if col.dim() != 1 or col.numel() != n:
                    raise TimelineError(
                        f"TimelineBatch({kind}): column {name} must be 1-D with {n} events, got {tuple(col.shape)}"
                    )
            return torch.stack([columns[name].to(dtype) for name in names])

        _check_cat_range(kind, {name: columns[name] for name in CAT_FIELDS[kind]})
        return cls(
            kind=kind,
            offsets=offsets,
            ids=stack(ID_FIELDS, torch.int64),
            ts=columns["ts"],
            cats=stack(CAT_FIELDS[kind], torch.int8),
            floats=stack(FLOAT_FIELDS[kind], torch.float32),
        )

    @classmethod
    def trusted(cls, **fields: torch.Tensor | str) -> TimelineBatch:
        """A batch built without :meth:`validate`, for producers whose output is valid by construction (e.g. the
        loader cutting batches from shards checked on write and read), where validation would cost more than the
        gather itself."""
        batch = object.__new__(cls)
        for name in (f.name for f in dataclasses.fields(cls)):
            object.__setattr__(batch, name, fields.pop(name))
        if fields:
            raise TypeError(f"TimelineBatch.trusted: unknown fields {sorted(fields)}")
        return batch

    @classmethod
    def empty(cls, kind: str, num_users: int = 0) -> TimelineBatch:
        return cls(
            kind=kind,
            offsets=torch.zeros(num_users + 1, dtype=torch.int64),
            ids=torch.empty(len(ID_FIELDS), 0, dtype=torch.int64),
            ts=torch.empty(0, dtype=torch.int64),
            cats=torch.empty(len(CAT_FIELDS[kind]), 0, dtype=torch.int8),
            floats=torch.empty(len(FLOAT_FIELDS[kind]), 0, dtype=torch.float32),
        )

    # validation ---------------------------------------------------------------------------------
    def validate(self) -> None:
        kind = self.kind
        where = f"TimelineBatch({kind})"
        if kind not in KINDS:
            raise TimelineError(f"TimelineBatch: kind must be one of {KINDS}, got {kind!r}")
        _expect(self.offsets, torch.int64, 1, f"{where}: offsets")
        _expect(self.ts, torch.int64, 1, f"{where}: ts")
        n = self.ts.numel()
        _expect(self.ids, torch.int64, 2, f"{where}: ids", (len(ID_FIELDS), n))
        _expect(self.cats, torch.int8, 2, f"{where}: cats", (len(CAT_FIELDS[kind]), n))
        _expect(self.floats, torch.float32, 2, f"{where}: floats", (len(FLOAT_FIELDS[kind]), n))
        for name, t in (("ids", self.ids), ("cats", self.cats), ("floats", self.floats)):
            if not t.is_contiguous():
                raise TimelineError(f"{where}: {name} must be contiguous (one contiguous column per row)")
        devices = {t.device for t in (self.offsets, self.ts, self.ids, self.cats, self.floats)}
        if len(devices) > 1:
            raise TimelineError(f"{where}: all tensors must be on one device, got {sorted(map(str, devices))}")
        if self.offsets.numel() == 0:
            raise TimelineError(f"{where}: offsets must have B + 1 >= 1 entries")
        if self.offsets[0].item() != 0 or self.offsets[-1].item() != n:
            raise TimelineError(
                f"{where}: offsets must start at 0 and end at the number of events {n}, "
                f"got {self.offsets[0].item()} .. {self.offsets[-1].item()}"
            )
        lengths = self.offsets.diff()
        if (lengths < 0).any():
            user = int(torch.nonzero(lengths < 0)[0, 0])
            raise TimelineError(f"{where}: offsets must be non-decreasing (user {user})")
        if n > 1:
            step = self.ts.diff()
            # a decrease is allowed only where a new user starts
            starts = torch.zeros(n - 1, dtype=torch.bool, device=self.ts.device)
            inner = self.offsets[1:-1]
            inner = inner[(inner > 0) & (inner < n)]
            starts[inner - 1] = True
            bad = (step < 0) & ~starts
            if bad.any():
                pos = int(torch.nonzero(bad)[0, 0]) + 1
                user = int(torch.searchsorted(self.offsets, torch.tensor(pos), right=True)) - 1
                raise TimelineError(
                    f"{where}: ts must be ascending within each user (user {user}, event {pos - int(self.offsets[user])})"
                )
        _check_cat_range(kind, {name: self.cats[i] for i, name in enumerate(CAT_FIELDS[kind])})
        for i, name in enumerate(FLOAT_FIELDS[kind]):
            col = self.floats[i]
            if not torch.isfinite(col).all():
                raise TimelineError(f"{where}: {name} must be finite (event {int(torch.nonzero(~torch.isfinite(col))[0, 0])})")
            if (col < 0).any():
                raise TimelineError(f"{where}: {name} must be >= 0 (event {int(torch.nonzero(col < 0)[0, 0])})")

    # access -------------------------------------------------------------------------------------
    @property
    def num_users(self) -> int:
        return self.offsets.numel() - 1

    @property
    def num_events(self) -> int:
        return self.ts.numel()

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets.diff()

    @property
    def device(self) -> torch.device:
        return self.ts.device

    def column(self, name: str) -> torch.Tensor:
        """The 1-D column of a field, by name (a view, no copy)."""
        if name == "ts":
            return self.ts
        for names, block in ((ID_FIELDS, self.ids), (CAT_FIELDS[self.kind], self.cats), (FLOAT_FIELDS[self.kind], self.floats)):
            if name in names:
                return block[names.index(name)]
        raise KeyError(f"TimelineBatch({self.kind}) has no field {name!r}")

    def fields(self) -> tuple[str, ...]:
        return ("ts", *ID_FIELDS, *CAT_FIELDS[self.kind], *FLOAT_FIELDS[self.kind])

    # A copy of a batch is as valid as the batch: no re-validation (it would sync the host on every transfer).
    def to(self, device: torch.device | str, non_blocking: bool = False) -> TimelineBatch:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return TimelineBatch.trusted(
            kind=self.kind, offsets=move(self.offsets), ids=move(self.ids), ts=move(self.ts), cats=move(self.cats),
            floats=move(self.floats),
        )

    def pin_memory(self) -> TimelineBatch:
        return TimelineBatch.trusted(
            kind=self.kind,
            offsets=self.offsets.pin_memory(),
            ids=self.ids.pin_memory(),
            ts=self.ts.pin_memory(),
            cats=self.cats.pin_memory(),
            floats=self.floats.pin_memory(),
        )

    def cut(self, cutoff: torch.Tensor) -> TimelineBatch:
        """Keep, per user ``b``, only the events with ``ts < cutoff[b]`` (e.g. ``request_ts - 24 h``)."""
        if cutoff.shape != (self.num_users,):
            raise TimelineError(f"TimelineBatch.cut: cutoff must have shape ({self.num_users},), got {tuple(cutoff.shape)}")
        user = torch.repeat_interleave(torch.arange(self.num_users, device=self.device), self.lengths, output_size=self.num_events)
        keep = self.ts < cutoff.to(self.device)[user]
        counts = torch.zeros(self.num_users, dtype=torch.int64, device=self.device).index_add_(0, user, keep.long())
        offsets = torch.zeros(self.num_users + 1, dtype=torch.int64, device=self.device)
        offsets[1:] = counts.cumsum(0)
        return TimelineBatch(
            kind=self.kind,
            offsets=offsets,
            ids=self.ids[:, keep].contiguous(),
            ts=self.ts[keep],
            cats=self.cats[:, keep].contiguous(),
            floats=self.floats[:, keep].contiguous(),
        )

    # TorchRec interop -----------------------------------------------------------------------------
    def to_kjt(self):
        """The id columns as a TorchRec ``KeyedJaggedTensor`` (keys = id fields); ``values`` is a view of ``ids``."""
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        return KeyedJaggedTensor(
            keys=list(ID_FIELDS), values=self.ids.reshape(-1), lengths=self.lengths.repeat(len(ID_FIELDS))
        )

    @classmethod
    def from_kjt(cls, kind: str, kjt, ts: torch.Tensor, cats: torch.Tensor, floats: torch.Tensor) -> TimelineBatch:
        """Inverse of :meth:`to_kjt`: the KJT's keys must be the id fields with equal lengths per key."""
        if list(kjt.keys()) != list(ID_FIELDS):
            raise TimelineError(f"TimelineBatch.from_kjt: keys must be {list(ID_FIELDS)}, got {list(kjt.keys())}")
        lengths = kjt.lengths().reshape(len(ID_FIELDS), -1)
        if not (lengths == lengths[:1]).all():
            raise TimelineError("TimelineBatch.from_kjt: every id field must have the same lengths per user")
        offsets = torch.zeros(lengths.shape[1] + 1, dtype=torch.int64, device=lengths.device)
        offsets[1:] = lengths[0].cumsum(0)
        return cls(kind=kind, offsets=offsets, ids=kjt.values().reshape(len(ID_FIELDS), -1), ts=ts, cats=cats, floats=floats)


def _expect(t: torch.Tensor, dtype: torch.dtype, dim: int, what: str, shape: tuple[int, ...] | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TimelineError(f"{what} must be a tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TimelineError(f"{what} must be {dtype}, got {t.dtype}")
    if t.dim() != dim:
        raise TimelineError(f"{what} must be {dim}-D, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != shape:
        raise TimelineError(f"{what} must have shape {shape}, got {tuple(t.shape)}")


def _check_cat_range(kind: str, cols: dict[str, torch.Tensor]) -> None:
    for name, col in cols.items():
        if col.numel() and (int(col.min()) < 0 or int(col.max()) > MAX_CAT_VALUE):
            raise TimelineError(
                f"TimelineBatch({kind}): {name} values must lie in [0, {MAX_CAT_VALUE}], got [{int(col.min())}, {int(col.max())}]"
            )
