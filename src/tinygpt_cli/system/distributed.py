"""Data-parallel training with PyTorch's own engine: torch.distributed + DistributedDataParallel.

Launched by `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address);
backend NCCL on CUDA, gloo on CPU. Every rank draws the same global batch from the same seeded
generator and trains on its own slice, so the data order depends only on the global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun, even as its only process

    @property
    def enabled(self) -> bool:
        """Whether this process is part of a process group: under torchrun, even alone (a GPU's
        one process then trains through NCCL and DDP, as it would beside others)."""
        return self.launched or self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env() -> DistContext:
    """The process's place in a torchrun launch; a plain process is rank 0 of 1."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistContext()
    return DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)), launched=True)


def init_process_group(ctx: DistContext, device_type: str) -> None:
    if ctx.enabled and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(ctx.local_rank)  # one GPU per process; NCCL works on the current one
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")


def backend_name() -> str | None:
    """The process group's backend (nccl, gloo), or None outside one."""
    return dist.get_backend() if dist.is_initialized() else None


def _collective_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo moves CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over all ranks (a no-op for one process)."""
    if ctx.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_int(value: int, ctx: DistContext) -> int:
    """Rank 0's integer, on every rank."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.broadcast(t, src=0)
    return int(t.item())


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
