"""Training, checkpoints and evaluation of DV365 models (``dv365 train``, ``dv365 eval``; paper 2.3, 3.3).

- :class:`TrainConfig` — the job config (YAML <-> dataclasses), :func:`load_config`
- :func:`train` — the loop: sparse tables + dense towers, exact resume, warm start, DDP under ``torchrun``
- :func:`evaluate_checkpoint` / :func:`load_model` — metrics of a checkpoint, the model for export

Names load on first use, so ``dv365 --help`` does not import torch.
"""

from ..lazy import lazy_names

_EXPORTS = {
    "CheckpointError": "checkpoint", "latest_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "spec_hash": "checkpoint", "TrainConfig": "config", "load_config": "config",
    "evaluate_checkpoint": "evaluate", "evaluate_model": "evaluate", "load_model": "evaluate",
    "train": "trainer", "warm_start": "trainer",
}

__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
