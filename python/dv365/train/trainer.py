"""The training loop of ``dv365 train`` (paper 2.3, 3.3): pooling + user tower + backbone, sparse tables.

It reads top to bottom like the job it runs: resolve the device and process group, open the data and the spec,
build the model (from scratch, from the run's newest checkpoint, or warm-started from another run), then step
until ``schedule.steps``, checkpointing every ``checkpoint.every`` steps, and finally evaluate and write
``metrics.json`` and ``loss_curve.png`` into the run folder.

Exact resume: a checkpoint holds the model, both optimizers, the loader position and every RNG, so a run killed
at any point and restarted with the same config continues as if it had never stopped (bitwise on the CPU).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

import dv365_ops

from .. import faults
from ..files import atomic_write_json
from ..data import DataError, Loader, open_dataset
from ..models import DV365Model, ModelConfig
from ..spec import SliceSpec, load_default_spec
from . import checkpoint as ckpt_io
from .checkpoint import CheckpointError
from .config import TrainConfig, check_fill_missing
from .distributed import DistInfo, all_reduce_, average_sparse_grads, barrier, init_distributed, shutdown


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but this torch has no CUDA device")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"device {device} does not exist: this host has {torch.cuda.device_count()} GPU(s) "
                             "(with torchrun, at most one process per GPU: --nproc-per-node)")
    return device


def load_spec(path: str | None) -> SliceSpec:
    return SliceSpec.from_yaml(Path(path)) if path else load_default_spec()


def build_model(spec: SliceSpec, model_cfg: ModelConfig, vocab_sizes: dict[str, int], device: torch.device) -> DV365Model:
    return DV365Model(spec, model_cfg, vocab_sizes).to(device)


def _optimizer(cfg, params: list[torch.nn.Parameter], sparse: bool) -> torch.optim.Optimizer | None:
    if not params:
        return None
    if cfg.name == "rowwise_adagrad":
        from .optim import RowWiseAdagrad

        return RowWiseAdagrad(params, lr=cfg.lr, eps=cfg.eps, weight_decay=0.0 if sparse else cfg.weight_decay)
    if cfg.name == "adagrad":
        # foreach kernels do not take sparse gradients
        return torch.optim.Adagrad(params, lr=cfg.lr, eps=cfg.eps, weight_decay=0.0 if sparse else cfg.weight_decay,
                                   foreach=False if sparse else None)
    if cfg.name == "sparse_adam":
        return torch.optim.SparseAdam(params, lr=cfg.lr, eps=cfg.eps)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=0.0 if sparse else cfg.weight_decay)
    # one fused kernel for all the dense parameters on CUDA instead of torch's default (foreach: a few kernels per
    # step of each group of tensors); the CPU keeps the default, whose results the bitwise-resume tests pin
    fused = True if all(p.is_cuda and p.dtype.is_floating_point for p in params) else None
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.AdamW(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=fused)


def build_optimizers(model: DV365Model, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """A dense optimizer for the towers and MLPs, a sparse-aware one for the embedding tables."""
    if model.config.sparse:
        groups = {"dense": _optimizer(cfg.optim.dense, model.dense_parameters(), False),
                  "sparse": _optimizer(cfg.optim.sparse, model.sparse_parameters(), True)}
    else:
        groups = {"dense": _optimizer(cfg.optim.dense, list(model.parameters()), False)}
    return {k: v for k, v in groups.items() if v is not None}


def _static_shapes(cfg: TrainConfig) -> bool:
    """CUDA graphs replay one input shape: a short last batch would record (and keep) a second graph."""
    from ..models.model import CUDAGRAPH_MODES

    return cfg.compile and cfg.compile_mode in CUDAGRAPH_MODES


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.autocast == "bf16" or (cfg.autocast == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _check_compatible(ckpt: dict[str, Any], spec_dict: dict[str, Any], model_cfg: ModelConfig, what: str) -> None:
    if ckpt["spec_hash"] != ckpt_io.spec_hash(spec_dict):
        raise CheckpointError(
            f"{what} {ckpt['path']} was trained with another slice spec (hash {ckpt['spec_hash']}, this config's spec "
            f"has {ckpt_io.spec_hash(spec_dict)}); use the spec it was trained with or start a new run_dir")
    if ckpt["config"]["model"] != model_cfg.to_dict():
        old, new = ckpt["config"]["model"], model_cfg.to_dict()
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise CheckpointError(f"{what} {ckpt['path']} has another model config (differs in: {', '.join(diff)})")


def warm_start(model: DV365Model, ckpt: dict[str, Any]) -> dict[str, int]:
    """Load an earlier model's weights into ``model`` (paper 3.3: recurring training on newer data).

    Embedding tables may have grown with the newer data's vocabularies: the rows both share are copied, the new
    rows keep their fresh initialization. Returns the number of rows copied per table."""
    own = model.state_dict()
    copied = {}
    for name, value in ckpt["model"].items():
        if name not in own:
            raise CheckpointError(f"warm start: {ckpt['path']} has parameter {name!r} that this model lacks")
        target = own[name]
        if target.shape == value.shape:
            target.copy_(value)
        elif target.dim() == 2 and target.shape[1:] == value.shape[1:]:
            n = min(target.shape[0], value.shape[0])
            target[:n].copy_(value[:n])
            copied[name] = n
        else:
            raise CheckpointError(f"warm start: {name!r} has shape {tuple(value.shape)} in {ckpt['path']}, "
                                  f"{tuple(target.shape)} here")
    return copied


class _Progress:
    """A tqdm bar on the main rank with loss, examples/s and users/s."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self, n: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(
    cfg: TrainConfig,
    *,
    init_from: str | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) the training job of ``cfg``; returns the metrics written to ``run_dir/metrics.json``.

    ``init_from``: a checkpoint (file or run folder) to warm-start from when the run has no checkpoint of its own.
    ``resume``: continue from the newest checkpoint in ``run_dir`` (False: refuse to overwrite one).
    ``stop_after``: return after this many steps of this call (tests; the run stays resumable)."""
    device = resolve_device(cfg.device)
    # the sparse optimizers rebuild the tables' gradients every step from indices the ops produced and checked;
    # saying so explicitly also silences torch's per-step notice that the checks are off
    torch.sparse.check_sparse_tensor_invariants.disable()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    info = init_distributed(device)
    try:
        return _train(cfg, device, info, init_from, resume, progress, stop_after)
    finally:
        shutdown(info)


def _train(cfg, device, info: DistInfo, init_from, resume, progress, stop_after) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    dataset = open_dataset(cfg.data.path)
    spec = load_spec(cfg.spec)
    spec_dict = spec.to_dict()
    existing = ckpt_io.latest_checkpoint(run_dir)
    ckpt = None
    if existing is not None:
        if not resume:
            raise CheckpointError(f"{run_dir} already holds checkpoints (newest {existing.name}); resume it, or "
                                  "choose another run_dir")
        ckpt = ckpt_io.load_checkpoint(existing)
        _check_compatible(ckpt, spec_dict, cfg.model, "resume:")
    warm = None
    if ckpt is None and init_from:
        warm = ckpt_io.load_checkpoint(init_from)
        _check_compatible(warm, spec_dict, cfg.model, "--init-from")
    check_fill_missing(cfg, dataset, "data.path")
    vocab = dict(dataset.vocab_sizes)
    if ckpt is not None and ckpt["vocab_sizes"] != vocab:
        raise CheckpointError(f"resume: {ckpt['path']} was built for vocabularies {ckpt['vocab_sizes']} but "
                              f"{cfg.data.path} has {vocab}; start a new run_dir with --init-from to warm-start")

    eval_dataset = open_dataset(cfg.data.eval_path) if cfg.data.eval_path else None
    if eval_dataset is not None:  # before any work: the tables are sized by the training data's vocabularies
        from .evaluate import check_data_fits

        check_data_fits(vocab, cfg.data.path, eval_dataset, "data.eval_path")
        check_fill_missing(cfg, eval_dataset, "data.eval_path")
    torch.manual_seed(cfg.seed)
    model = build_model(spec, cfg.model, vocab, device)
    optimizers = build_optimizers(model, cfg)
    loader = Loader(dataset, cfg.data.batch_size, cfg.data.gap, max_events=cfg.data.max_events,
                    shuffle=cfg.data.shuffle, seed=cfg.seed, prefetch=cfg.data.prefetch, workers=cfg.data.workers,
                    mode=cfg.data.loader_mode,
                    fill_missing=cfg.data.fill_missing, rank=info.rank, world_size=info.world_size,
                    drop_last=info.enabled or _static_shapes(cfg))
    if len(loader) == 0:
        raise DataError(f"{cfg.data.path} yields no batch of {cfg.data.batch_size} examples per rank")
    step, epoch, history = 0, 0, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][name])
        loader.load_state_dict(ckpt["loader"])
        step, epoch, history = ckpt["step"], ckpt["epoch"], ckpt["history"]
        ckpt_io.set_rng_state(ckpt["rng"][info.rank])
    elif warm is not None:
        warm_start(model, warm)
    del ckpt, warm

    train_model: torch.nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        sparse_ids = {id(p) for p in model.sparse_parameters()} if cfg.model.sparse else set()
        ignore = [n for n, p in model.named_parameters() if id(p) in sparse_ids]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
        train_model = DistributedDataParallel(model, broadcast_buffers=False)
    if cfg.compile:
        model.compile_head(mode=cfg.compile_mode)

    sparse_params = model.sparse_parameters() if cfg.model.sparse else []
    base_lrs = {name: [g["lr"] for g in opt.param_groups] for name, opt in optimizers.items()}
    epoch_len = len(loader)
    total = cfg.schedule.steps if cfg.schedule.epochs is None else min(cfg.schedule.steps, cfg.schedule.epochs * epoch_len)
    bar = _Progress(progress and info.is_main, total, step)
    a = cfg.model.watch_time_weight
    window = {"loss": torch.zeros((), device=device), "steps": 0, "examples": 0, "users": 0, "t0": time.perf_counter()}
    steps_this_call = 0
    last_saved = step

    def save(at: int) -> None:
        state = _checkpoint_state(cfg, model, optimizers, loader, epoch, history, spec_dict, vocab, info)
        if info.is_main:
            ckpt_io.save_checkpoint(run_dir, at, state, cfg.checkpoint.keep)
        barrier(info)

    # on CUDA the ops' data checks are read once per log line, before each checkpoint and at the end
    # (dv365_ops.deferred) instead of at every call: each read is a device synchronization, several per step
    deferring = device.type == "cuda"

    def check_inputs(at: int) -> None:
        if deferring:
            try:
                dv365_ops.check_deferred()
            except RuntimeError as e:
                raise RuntimeError(f"dv365 train: bad input in the steps up to step {at}: {e}") from None

    previous_mode = dv365_ops.set_deferred_checks(deferring)
    try:
        resumed = step > 0
        while step < total and (stop_after is None or steps_this_call < stop_after):
            if not resumed:  # a resumed loader already stands inside its epoch
                loader.set_epoch(epoch)
            resumed = False
            for batch in loader:
                users = int(batch.examples.user_id.unique().numel())
                batch = batch.to(device, non_blocking=True)
                if cfg.optim.warmup_steps:
                    scale = min(1.0, (step + 1) / cfg.optim.warmup_steps)
                    for name, opt in optimizers.items():
                        for g, lr in zip(opt.param_groups, base_lrs[name]):
                            g["lr"] = lr * scale
                with _autocast(cfg, device):
                    out = train_model(batch)
                sums, counts = model.loss_terms(out, batch)
                counts = all_reduce_(counts.detach().clone(), info)
                # each rank's share of the global loss, times world size: DDP averages the dense gradients over
                # ranks and the sparse ones are summed then divided, so every rank applies the global mean's gradient
                loss = DV365Model.total_loss(sums, counts, a) * info.world_size
                for opt in optimizers.values():
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                if sparse_params:
                    average_sparse_grads(sparse_params, info)
                if cfg.optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.dense_parameters() if cfg.model.sparse else model.parameters(),
                                                   cfg.optim.grad_clip)
                for opt in optimizers.values():
                    opt.step()
                step += 1
                steps_this_call += 1
                faults.checkpoint("train.step")
                # this rank's share of the global batch's loss (the loss is linear in the sums): summed over ranks
                # once per log line, not every step
                window["loss"] += DV365Model.total_loss(sums.detach().float(), counts, a)
                window["steps"] += 1
                window["examples"] += len(batch.examples) * info.world_size
                window["users"] += users * info.world_size
                if step % cfg.schedule.log_every == 0 or step == total:
                    check_inputs(step)
                    dt = max(time.perf_counter() - window["t0"], 1e-9)
                    mean_loss = float(all_reduce_(window["loss"], info)) / window["steps"]
                    if not math.isfinite(mean_loss):
                        raise FloatingPointError(f"dv365 train: the loss is {mean_loss} at step {step}; lower the "
                                                 "learning rates or check the data")
                    history.append({"step": step, "loss": mean_loss, "examples_per_s": window["examples"] / dt,
                                    "users_per_s": window["users"] / dt})
                    bar.update(window["steps"], loss=f"{mean_loss:.4f}", ex_s=f"{window['examples'] / dt:,.0f}",
                               users_s=f"{window['users'] / dt:,.0f}")
                    window.update(loss=torch.zeros((), device=device), steps=0, examples=0, users=0, t0=time.perf_counter())
                if step % cfg.checkpoint.every == 0 or step == total:
                    check_inputs(step)  # a checkpoint never holds a step that took bad input
                    save(step)
                    last_saved = step
                if step >= total or (stop_after is not None and steps_this_call >= stop_after):
                    break
            else:
                epoch += 1
                continue
            break
        check_inputs(step)
    finally:
        dv365_ops.set_deferred_checks(previous_mode)
        loader.close()  # its worker processes are idle from here (evaluation has its own loader)
    bar.close()
    if last_saved != step:
        save(step)
    result: dict[str, Any] = {"step": step, "history": history, "run_dir": str(run_dir)}
    if step >= total:
        result.update(_finish(cfg, model, eval_dataset, device, info, history, run_dir))
    return result


def _checkpoint_state(cfg, model, optimizers, loader, epoch, history, spec_dict, vocab, info) -> dict[str, Any]:
    rng = [ckpt_io.rng_state()]
    if info.enabled:
        import torch.distributed as dist

        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, rng[0])
        rng = gathered
    return {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "loader": loader.state_dict(),
        "rng": rng,
        "history": list(history),
        "config": cfg.to_dict(),
        "spec": spec_dict,
        "spec_hash": ckpt_io.spec_hash(spec_dict),
        "vocab_sizes": dict(vocab),
        "world_size": info.world_size,
    }


def _finish(cfg, model, eval_dataset, device, info: DistInfo, history, run_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if eval_dataset is not None and info.is_main:
        from .evaluate import evaluate_model

        out["eval"] = evaluate_model(model, eval_dataset, cfg.data, device, autocast=_autocast(cfg, device))
    if info.is_main:
        metrics = {"config": cfg.to_dict(), "steps": history[-1]["step"] if history else 0, "history": history, **out}
        atomic_write_json(run_dir / "metrics.json", metrics)
        plot_loss_curve(history, run_dir / "loss_curve.png", title=f"{cfg.model.tower.name}: {run_dir.name}")
    barrier(info)
    return out


def plot_loss_curve(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    if not history:
        return
    from ..files import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (Σ BCE + a·MSE)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
