"""The training job's config (``dv365 train CONFIG [key=value ...]``): dataclasses read from one YAML file.

Every section has defaults, so a config names only what differs. ``dv365 train --print-config`` shows the full
config with every default filled in. A key that does not exist is an error naming it before any work starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..configs import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from ..models import ModelConfig
from ..models.model import COMPILE_MODES


@dataclasses.dataclass
class DataConfig:
    path: str = "data/train"  # a dataset written by `dv365 synth` / `dv365 ingest`
    eval_path: str | None = None  # evaluated at the end (and every schedule.eval_every steps)
    batch_size: int = 32  # examples per step and rank
    gap: int = 86_400  # seconds: each history is cut this long before its request (the distant-interest objective)
    max_events: int | None = None  # keep only each timeline's most recent events (the short-history baseline)
    shuffle: bool = True
    fill_missing: float | None = None  # value for unknown durations / dwell times in the timelines (NaN in the data)
    prefetch: int = 2  # batches prepared ahead of the step
    workers: int | None = None  # loader workers (None: the usable cores, split between local ranks)
    loader_mode: str = "thread"  # who builds batches: thread, process (forked workers: no GIL shared with the
    # step), auto (processes where there are >= 2 workers on Linux); docs/data.md has the measurements


@dataclasses.dataclass
class OptimizerConfig:
    name: str
    lr: float
    weight_decay: float = 0.0
    eps: float = 1e-8


def _dense_default() -> OptimizerConfig:
    return OptimizerConfig(name="adamw", lr=1e-3)


def _sparse_default() -> OptimizerConfig:
    # Row-wise adaptive steps suit embedding tables whose rows are touched rarely (fbgemm's TBE default); one
    # accumulator per row, and only the touched rows are read and written (dv365.train.optim)
    return OptimizerConfig(name="rowwise_adagrad", lr=0.05, eps=1e-10)


@dataclasses.dataclass
class OptimConfig:
    dense: OptimizerConfig = dataclasses.field(default_factory=_dense_default)
    sparse: OptimizerConfig = dataclasses.field(default_factory=_sparse_default)
    warmup_steps: int = 0  # linear learning-rate warm-up of both optimizers
    grad_clip: float | None = None  # max global norm of the dense gradients


@dataclasses.dataclass
class ScheduleConfig:
    steps: int = 300  # optimizer steps in all (the run may also stop at `epochs`)
    epochs: int | None = None
    log_every: int = 10


@dataclasses.dataclass
class CheckpointConfig:
    every: int = 100  # steps between checkpoints (and one at the end)
    keep: int = 2  # checkpoints kept in run_dir/checkpoints


@dataclasses.dataclass
class TrainConfig:
    run_dir: str = "runs/dv365"  # checkpoints, metrics.json, loss_curve.png
    seed: int = 0
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    spec: str | None = None  # a slice-spec YAML; None = the default spec shipped with dv365
    compile: bool = False  # torch.compile the tower + backbone
    compile_mode: str = "default"  # torch.compile's mode; reduce-overhead = CUDA graphs (drops a short last batch)
    autocast: str = "auto"  # auto (bf16 on CUDA), bf16, off
    threads: int | None = None  # torch CPU threads (None = torch's default)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(f"config: {msg}")

        if self.data.batch_size < 1:
            bad(f"data.batch_size must be >= 1, got {self.data.batch_size}")
        if self.data.gap < 0:
            bad(f"data.gap must be >= 0 seconds, got {self.data.gap}")
        if self.data.loader_mode not in ("auto", "process", "thread"):
            bad(f"data.loader_mode must be auto, process or thread, got {self.data.loader_mode!r}")
        if self.data.workers is not None and self.data.workers < 1:
            bad(f"data.workers must be >= 1, got {self.data.workers}")
        if self.schedule.steps < 1:
            bad(f"schedule.steps must be >= 1, got {self.schedule.steps}")
        if self.checkpoint.every < 1 or self.checkpoint.keep < 1:
            bad("checkpoint.every and checkpoint.keep must be >= 1")
        if self.compile_mode not in COMPILE_MODES:
            bad(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.compile_mode != "default" and not self.compile:
            bad(f"compile_mode {self.compile_mode!r} needs compile: true")
        if self.autocast not in ("auto", "bf16", "off"):
            bad(f"autocast must be auto, bf16 or off, got {self.autocast!r}")
        for which, opt in (("dense", self.optim.dense), ("sparse", self.optim.sparse)):
            known = DENSE_OPTIMIZERS if which == "dense" else SPARSE_OPTIMIZERS
            if opt.name not in known:
                bad(f"optim.{which}.name must be one of {sorted(known)}, got {opt.name!r}")
            if not opt.lr > 0:
                bad(f"optim.{which}.lr must be > 0, got {opt.lr}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


DENSE_OPTIMIZERS = ("adamw", "adam", "sgd", "adagrad")
SPARSE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sparse_adam", "sgd")


def check_fill_missing(cfg: TrainConfig, dataset, key: str) -> None:
    """A dataset with unknown (null) durations or dwell times needs ``data.fill_missing``: named as the config key,
    with the value real logs want (NaN), before any work starts; the loader's own error speaks of its Python
    argument."""
    if cfg.data.fill_missing is not None:
        return
    missing = dataset.missing_floats()
    if missing:
        raise ConfigError(
            f"config: {key} {dataset.path} has unknown implicit {', '.join(missing)} (null in its manifest's "
            "null_counts) and data.fill_missing is not set: set data.fill_missing: .nan (YAML; data.fill_missing=.nan "
            "as an override) so that unknown values select no dwell or watch-ratio slice (docs/real-data.md); a "
            "number instead claims that value for every unknown one")


def load_config(path: str | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config of YAML file ``path`` (None: all defaults) with ``key.sub=value`` overrides applied."""
    data = load_yaml(path) if path else {}
    return TrainConfig.from_dict(apply_overrides(data, overrides))
