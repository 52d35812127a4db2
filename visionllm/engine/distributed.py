"""Distributed training helpers: process group from torchrun's environment, the model wrapped
for ``trainer.strategy=ddp|fsdp``, a sampler that shards an epoch across ranks and can start
mid-epoch (exact resume), full state dicts gathered for rank-0 checkpoints.

FSDP is PyTorch's per-parameter sharding (``fully_shard``, "FSDP2"): every transformer layer of
the LLM, of BERT and of the deformable encoder/decoder is one unit (gathered for its forward and
backward, then freed), the rest of the model is the root unit. Frozen and trainable tensors
may share a unit (LoRA beside its frozen base), each a DTensor of its own. ``predict`` is
registered as a forward method, so evaluation gathers what it needs; every rank evaluates the
same samples in step (they issue the same collectives), rank 0 reports.
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


def mean_across(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Each key's mean over the ranks; a rank without a key (no text in its batch) counts zero,
    which is exact for our losses: each rank's term is its part of a sum over all ranks."""
    if not info.enabled:
        return dict(values)
    gathered: list[dict | None] = [None] * info.world_size
    dist.all_gather_object(gathered, dict(values))
    keys = sorted({k for g in gathered for k in g})
    return {k: sum(g.get(k, 0.0) for g in gathered) / info.world_size for k in keys}


STRATEGIES = ("ddp", "fsdp")
# one FSDP unit per layer of these classes (transformers' LLaMA and BERT, ours)
FSDP_LAYER_CLASSES = ("LlamaDecoderLayer", "BertLayer", "EncoderLayer", "DecoderLayer")


def wrap_model(model: torch.nn.Module, strategy: str, device: torch.device, info: DistInfo) -> torch.nn.Module:
    """The module the training step calls: ``model`` itself (one process), DDP around it, or
    ``model`` sharded in place by FSDP. Build the optimizer after this (FSDP swaps parameters)."""
    if not info.enabled:
        return model
    if strategy == "ddp":
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    with torch.no_grad():  # every rank shards rank 0's tensors, as DDP starts from them
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)
    units = [m for m in model.modules() if type(m).__name__ in FSDP_LAYER_CLASSES]
    for unit in units:
        fully_shard(unit)
    fully_shard(model)
    register_fsdp_forward_method(model, "predict")
    if hasattr(model, "lockstep"):
        model.lockstep = True  # the same LLM passes on every rank, whatever each batch holds
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the model as one ordinary state dict on the CPU (a collective under FSDP:
    all ranks call it, rank 0 receives the tensors)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimizer's state to save (a collective under FSDP, full on rank 0, keyed by parameter name)."""
    if not is_sharded(model):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    if not is_sharded(model):
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def local_value(t: torch.Tensor) -> float:
    """A scalar that may be a DTensor (FSDP's gradient norm) as a float."""
    return float(t.full_tensor() if hasattr(t, "full_tensor") else t)


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
