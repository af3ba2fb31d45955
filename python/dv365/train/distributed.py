"""Multi-process training with ``torchrun``: DDP for the dense parameters, an all-gather for the sparse tables.

The embedding tables get sparse gradients (only the rows a batch touched), which NCCL cannot all-reduce and DDP
would densify; so the tables are left out of DDP and their gradients are averaged across ranks by gathering
every rank's (row, value) pairs. Replicated tables stay identical on every rank because each applies the same
averaged gradient. Row-wise sharding of the tables is the next step for tables beyond one device.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (a no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    return DistInfo(rank, world, local)


def all_reduce_(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t)
    return t


def average_sparse_grads(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Replace each parameter's sparse gradient by its mean over ranks, as DDP does for the dense ones."""
    if not info.enabled:
        return
    for p in params:
        g = p.grad
        if g is None:
            g = torch.sparse_coo_tensor(torch.empty(1, 0, dtype=torch.int64, device=p.device),
                                        torch.empty(0, *p.shape[1:], dtype=p.dtype, device=p.device), p.shape)
        g = g.coalesce()
        rows, values = g.indices()[0], g.values()
        count = torch.tensor([rows.numel()], device=p.device)
        counts = [torch.zeros_like(count) for _ in range(info.world_size)]
        dist.all_gather(counts, count)
        most = int(max(int(c) for c in counts))
        pad = most - rows.numel()
        rows_p = torch.cat([rows, rows.new_zeros(pad)])
        values_p = torch.cat([values, values.new_zeros(pad, *values.shape[1:])])
        all_rows = [torch.empty_like(rows_p) for _ in range(info.world_size)]
        all_values = [torch.empty_like(values_p) for _ in range(info.world_size)]
        dist.all_gather(all_rows, rows_p)
        dist.all_gather(all_values, values_p)
        # concatenated in rank order, then coalesced: the sum is the same on every rank
        rows_cat = torch.cat([r[: int(c)] for r, c in zip(all_rows, counts)])
        values_cat = torch.cat([v[: int(c)] for v, c in zip(all_values, counts)])
        p.grad = torch.sparse_coo_tensor(rows_cat.unsqueeze(0), values_cat, p.shape).coalesce() / info.world_size


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
