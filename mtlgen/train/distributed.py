"""Where training runs: one process (CPU or one GPU), or data-parallel processes under torchrun.

Data parallelism is torch's own: ``DistributedDataParallel`` averages gradients during the
backward pass and a ``DistributedSampler`` gives each process its share of every epoch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes and its device."""

    world: int
    rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints, records and tracking."""
        return self.rank == 0


def select_device(choice: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda`` (an error when absent)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def start_processes(device_choice: str, threads: int | None = None) -> Processes:
    """Read torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), join the process
    group (NCCL on GPUs, gloo on CPUs) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = select_device(device_choice)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if threads:
        torch.set_num_threads(threads)
    return Processes(world, rank, device)


def data_parallel(module: nn.Module, procs: Processes) -> nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` under torchrun, else itself. A step may
    leave parameters unused (no visit of the batch needs segmenting, say), so DDP looks for them
    after each forward pass."""
    if procs.world == 1:
        return module
    ids = [procs.device.index] if procs.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def mean_over_processes(values: torch.Tensor, procs: Processes) -> torch.Tensor:
    """The mean of ``values`` over the processes (``values`` itself in one process)."""
    if procs.world == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / procs.world


def replica_difference(model: nn.Module) -> float:
    """Largest absolute difference of any weight between the data-parallel processes."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)
