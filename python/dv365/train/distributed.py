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
    """Replace each parameter's sparse gradient by its mean over ranks, as DDP does for the dense ones.

    Every rank's (row, value) pairs of every table are gathered in one go: one all-gather of the pair counts (the
    one read back: the buffers' sizes) and, per (dtype, width), one of the rows and one of the values, whatever
    the number of tables (20 at W40K; a gather per table was three collectives and two reads each). The result
    is every rank's pairs concatenated in rank order, divided by the world size: the same on every rank, and
    uncoalesced (a row touched on several ranks repeats; the optimizers sum repeated rows)."""
    if not info.enabled or not params:
        return
    world = info.world_size
    grads = []
    for p in params:
        g = p.grad
        if g is None:
            g = torch.sparse_coo_tensor(torch.empty(1, 0, dtype=torch.int64, device=p.device),
                                        torch.empty(0, *p.shape[1:], dtype=p.dtype, device=p.device), p.shape)
        if not g.is_sparse or g.sparse_dim() != 1:
            raise ValueError(f"average_sparse_grads: a table's gradient must be sparse COO over rows, got "
                             f"{g.layout} with {g.sparse_dim() if g.is_sparse else 0} sparse dims")
        grads.append((g._indices()[0], g._values()))
    counts = torch.tensor([r.numel() for r, _ in grads], dtype=torch.int64, device=params[0].device)
    gathered = [torch.empty_like(counts) for _ in range(world)]
    dist.all_gather(gathered, counts)
    per_rank = torch.stack(gathered).tolist()  # [rank][param]
    # one gather per (dtype, width): the tables' pairs of a rank packed one after the other, padded to the most
    groups: dict[tuple, list[int]] = {}
    for k, (_, v) in enumerate(grads):
        groups.setdefault((v.dtype, tuple(v.shape[1:])), []).append(k)
    pieces: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in params]
    for (dtype, width), members in groups.items():
        totals = [sum(per_rank[r][k] for k in members) for r in range(world)]
        most = max(totals)
        rows = torch.cat([grads[k][0] for k in members])
        values = torch.cat([grads[k][1] for k in members])
        pad = most - rows.numel()
        if pad:
            rows = torch.cat([rows, rows.new_zeros(pad)])
            values = torch.cat([values, values.new_zeros(pad, *width)])
        all_rows = [torch.empty_like(rows) for _ in range(world)]
        all_values = [torch.empty_like(values) for _ in range(world)]
        dist.all_gather(all_rows, rows)
        dist.all_gather(all_values, values)
        for r in range(world):
            at = 0
            for k in members:
                n = per_rank[r][k]
                pieces[k].append((all_rows[r][at:at + n], all_values[r][at:at + n]))
                at += n
    for p, parts in zip(params, pieces):
        rows = torch.cat([r for r, _ in parts])
        values = torch.cat([v for _, v in parts])
        p.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values / world, p.shape, check_invariants=False)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
