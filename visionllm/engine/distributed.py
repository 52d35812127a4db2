"""Distributed training helpers: process group from torchrun's environment, a sampler that
shards an epoch across ranks and can start mid-epoch (exact resume), rank-0-only side effects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass
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
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPUs); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_across(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / info.world_size


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, dealt to ranks round-robin, from batch ``start`` on.

    The permutation depends only on (seed, epoch), so a resumed run sees exactly the samples
    an uninterrupted one would have seen next.
    """

    def __init__(self, n: int, *, seed: int, epoch: int, batch_size: int, rank: int = 0, world_size: int = 1, start: int = 0):
        self.n, self.seed, self.epoch = n, seed, epoch
        self.batch_size, self.rank, self.world_size, self.start = batch_size, rank, world_size, start

    def _indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per_rank = (self.n // (self.world_size * self.batch_size)) * self.batch_size  # drop_last, equal across ranks
        mine = perm[self.rank :: self.world_size][:per_rank]
        return mine[self.start * self.batch_size :]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())

    def batches_per_epoch(self) -> int:
        return (self.n // (self.world_size * self.batch_size))
