"""Training on several processes is torch.distributed's: DDP over gloo (CPU) or NCCL (GPU), launched by torchrun.

``torchrun --nproc_per_node N -m seqdsl train ...`` starts N copies of the command; each finds its rank in the
environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) and `join` sets
up the process group. ``seqdsl train --nproc N`` does the same by running torchrun itself
(`compilers.training.launch`). Rank 0 alone writes files and prints; every process computes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from seqdsl.errors import Location, SpecError


@dataclass
class World:
    rank: int
    size: int
    device: torch.device
    owns_group: bool = False  # whether `join` created the process group (and `leave` ends it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the processes (in place; itself when there is one process)."""
        if self.size > 1:
            dist.all_reduce(values)
        return values

    def max(self, values: torch.Tensor) -> torch.Tensor:
        """The elementwise largest of ``values`` over the processes (in place)."""
        if self.size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return values

    def broadcast(self, values: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``values``, in every process (in place)."""
        if self.size > 1:
            dist.broadcast(values, 0)
        return values


def pick_device(asked: str, local_rank: int = 0) -> torch.device:
    if asked not in ("auto", "cpu", "cuda"):
        raise SpecError("E0707", f"--device {asked!r}: one of auto, cpu, cuda", Location("--device", path="device"))
    if asked == "cuda" and not torch.cuda.is_available():
        raise SpecError("E0707", "--device cuda: no usable CUDA device here", Location("--device", path="device"),
                        hint="use --device cpu (or auto)")
    if asked == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def join(device: str) -> World:
    """This process's place: from an existing process group, torchrun's environment, or alone."""
    if dist.is_available() and dist.is_initialized():
        rank, size = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return World(rank, size, pick_device(device, local) if dist.get_backend() == "nccl" else torch.device("cpu"))
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(0, 1, pick_device(device))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    where = pick_device(device, local)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    dist.init_process_group("nccl" if where.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), where, owns_group=True)


def leave(world: World) -> None:
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()

