"""Evaluation (``dv365 eval``): per-task NE, AUC and watch-time MSE of a model on a dataset (paper eq. 12), and
the relative NE delta of one model against a baseline on the same examples (paper table 2)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import torch

from ..data import Dataset, Loader, open_dataset
from ..metrics import MetricSet, relative_deltas
from . import checkpoint as ckpt_io
from .checkpoint import CheckpointError
from .config import DataConfig, TrainConfig


@torch.no_grad()
def evaluate_model(model, dataset: Dataset, data: DataConfig, device: torch.device, autocast=None,
                   progress: bool = False) -> dict[str, Any]:
    """Metrics of ``model`` over every example of ``dataset`` (histories cut as in training)."""
    was_training = model.training
    model.eval()
    loader = Loader(dataset, data.batch_size, data.gap, max_events=data.max_events, shuffle=False,
                    prefetch=data.prefetch, fill_missing=data.fill_missing, workers=data.workers,
                    mode=data.loader_mode)
    metrics = MetricSet(device=device)
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="eval", unit="batch", dynamic_ncols=True)
    try:
        for batch in batches:
            batch = batch.to(device, non_blocking=True)
            with autocast if autocast is not None else contextlib.nullcontext():
                out = model(batch)
            ex = batch.examples
            metrics.update(out.logits.float(), ex.labels, ex.label_mask, out.watch_time.float(),
                           model.watch_time_target(ex.watch_time), ex.watch_time_mask)
    finally:
        model.train(was_training)
        loader.close()
    return metrics.compute()


def load_model(checkpoint: str, device: torch.device | str = "cpu"):
    """The model of a checkpoint (file or run folder), in eval mode, with its training config."""
    from .trainer import build_model

    ckpt = ckpt_io.load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(ckpt["config"])
    from ..spec import SliceSpec

    spec = SliceSpec.from_dict(ckpt["spec"])
    model = build_model(spec, cfg.model, ckpt["vocab_sizes"], torch.device(device))
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, cfg, ckpt


def check_data_fits(vocab_sizes: dict[str, int], tables_of: str, dataset: Dataset, what: str) -> None:
    """Tables sized for ``vocab_sizes`` (those of ``tables_of``: a checkpoint or a dataset) must cover the data's
    id vocabularies."""
    big = {k: (v, vocab_sizes[k]) for k, v in dataset.vocab_sizes.items() if k in vocab_sizes and v > vocab_sizes[k]}
    if big:
        detail = ", ".join(f"{k}: data {v:,} > model {m:,}" for k, (v, m) in big.items())
        raise CheckpointError(f"{what}: {dataset.path} has ids beyond the tables of {tables_of} ({detail}); "
                              "warm-start a model on this data first (dv365 train --init-from)")


def evaluate_checkpoint(checkpoint: str, data_path: str, *, baseline: str | None = None, device: str = "cpu",
                        batch_size: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Metrics of a checkpoint on ``data_path``; with ``baseline``, also the baseline's and the relative deltas."""
    dataset = open_dataset(data_path)
    dev = torch.device(device)
    result: dict[str, Any] = {"data": str(data_path)}
    for role, path in (("model", checkpoint), ("baseline", baseline)):
        if path is None:
            continue
        model, cfg, ckpt = load_model(path, dev)
        check_data_fits(ckpt["vocab_sizes"], ckpt["path"], dataset, f"dv365 eval {role}")
        data = cfg.data if batch_size is None else dataclasses.replace(cfg.data, batch_size=batch_size)
        result[role] = {"checkpoint": ckpt["path"], "step": ckpt["step"], "tower": cfg.model.tower.name,
                        "max_events": cfg.data.max_events,
                        "metrics": evaluate_model(model, dataset, data, dev, progress=progress)}
    if baseline is not None:
        result["delta_pct"] = relative_deltas(result["model"]["metrics"], result["baseline"]["metrics"])
    return result


def format_table(metrics: dict[str, Any], baseline: dict[str, Any] | None = None,
                 delta: dict[str, float] | None = None) -> str:
    """A markdown table of :meth:`MetricSet.compute` results (and a baseline's, with the relative deltas).

    A value that is not finite is printed as ``–`` with a note under the table: NE is +inf or NaN and AUC NaN when
    every observed label of a task is the same (a log that never shows that action: all its labels are 0)."""
    undefined = False

    def cell(value: float | None, fmt: str) -> str:
        nonlocal undefined
        if value is None or not math.isfinite(value):
            undefined = True
            return "–"
        return format(value, fmt)

    head = "| task | examples | pos rate | NE | AUC |"
    rule = "| --- | ---: | ---: | ---: | ---: |"
    if baseline is not None:
        head += " baseline NE | baseline AUC | Δ NE / MSE % |"
        rule += " ---: | ---: | ---: |"
    rows = [head, rule]
    for task, m in metrics.items():
        if task == "watch_time":
            row = f"| watch time (MSE of log1p s) | {m['count']:,} | | {cell(m['mse'], '.4f')} | |"
            if baseline is not None:
                row += f" {cell(baseline[task]['mse'], '.4f')} | | {cell(delta[task], '+.2f')} |"
        else:
            row = (f"| {task} | {m['count']:,} | {cell(m['pos_rate'], '.3f')} | {cell(m['ne'], '.4f')} | "
                   f"{cell(m.get('auc'), '.4f')} |")
            if baseline is not None:
                b = baseline[task]
                row += f" {cell(b['ne'], '.4f')} | {cell(b.get('auc'), '.4f')} | {cell(delta[task], '+.2f')} |"
        rows.append(row)
    if undefined:
        rows += ["", "–: undefined: the task has no observed label, or every observed label is the same (no positive "
                 "or no negative example, e.g. an action the data never shows), so NE and AUC do not exist"]
    return "\n".join(rows)


__all__ = ["CheckpointError", "evaluate_checkpoint", "evaluate_model", "format_table", "load_model"]
