"""Distributed data-parallel training through ``torchrun``: PyTorch's own machinery, nothing else.

``torchrun --nproc_per_node N -m yoloslim train ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; :func:`setup` then joins the process group (gloo on CPU, nccl on CUDA). Only rank 0
validates, saves and logs; the others train and wait.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from yoloslim.device import resolve_device


@dataclass
class Dist:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """The job layout that ``torchrun`` put into the environment (one process when absent)."""
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                int(os.environ.get("WORLD_SIZE", 1)))


def process_device(d: Dist, device: str | None) -> torch.device:
    """This process's device for ``--device device``: under ``torchrun`` every process takes the GPU of
    its local rank (an index given on the command line would put them all on one GPU)."""
    dev = resolve_device(device, d.local_rank)
    if d.enabled and dev.type == "cuda":
        dev = resolve_device(f"cuda:{d.local_rank}")
    return dev


def setup(d: Dist, device: str | None) -> torch.device:
    """Join the process group when ``d`` has more than one process; return this process's device."""
    dev = process_device(d, device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if d.enabled and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=d.rank, world_size=d.world_size)
    return dev


def wrap(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """The model wrapped in ``DistributedDataParallel`` when distributed, else unchanged."""
    if not d.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def any_flag(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any (e.g. a non-finite loss)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_flag(flag: bool, d: Dist, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every process (e.g. rank 0 decided to stop early)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def cleanup(d: Dist) -> None:
    """Leave the process group."""
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
