"""Multi-process training with torch.distributed, launched by torchrun (one process per GPU).

    torchrun --nproc_per_node 8 train.py --config configs/ddr.yaml
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --rdzv_backend c10d \\
             --rdzv_endpoint HOST:29500 train.py --config configs/ddr.yaml

What this module gives the trainer:

- :func:`setup` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), starts
  the process group (NCCL on GPUs, Gloo on CPUs) and picks the process's device;
- :class:`EpochShuffleSampler` (training: one permutation per epoch and seed, shared by all
  ranks, dealt out round robin) and :class:`ShardSampler` (evaluation: every sample exactly
  once, no padding);
- :func:`average_gradients`: DDP's gradient semantics (the mean over all processes, before
  the optimiser steps, in one all-reduce per dtype). The DDP module wrapper itself does not fit
  the joint step: it hooks ``backward()`` only, while the joint step takes two gradients with
  ``torch.autograd.grad`` (the ISR net's whole loss, the grader's grading loss alone);
- :func:`gather_objects` and :func:`all_reduce_sum` for evaluation; :func:`any_rank` for a stop
  every process agrees on (preemption, docs/RELIABILITY.md).

A single process (no torchrun) is world size 1 and every function here is a no-op.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, checkpoints and figures."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE_PROCESS = World()


def current() -> World:
    """The running process group's world, or a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    )


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join torchrun's process group when launched by it; returns the world and this process's device.

    ``device`` is the configured one: on CUDA each process takes GPU ``LOCAL_RANK``.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    world = current()
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one log, from rank 0
    log.info("distributed: %d processes, backend %s", world.size, dist.get_backend())
    return world, device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().distributed:
        dist.barrier()


def local_batch_size(global_batch: int, world: World, key: str) -> int:
    """A config's batch size is the global batch; each process takes an equal share of it."""
    if global_batch % world.size:
        raise ValueError(
            f"{key}={global_batch} must be divisible by the {world.size} processes (it is the global batch)"
        )
    return global_batch // world.size


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation each epoch (``seed + epoch``), identical on every rank, dealt round robin.

    Rank ``r`` takes positions ``r, r + size, ...``; the permutation is padded by wrapping so
    every rank gets the same number of samples (as DistributedSampler does). With one process it
    yields exactly the order ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed +
    epoch))`` gave (one draw for the workers' base seed, then ``randperm``), so single-process
    runs keep the order of earlier releases.
    """

    def __init__(self, length: int, seed: int, world: World = SINGLE_PROCESS) -> None:
        self.length, self.seed, self.world = length, seed, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch ``epoch``'s share from this process's ``start``-th sample on: a run resumed inside
        an epoch skips what it trained on without loading it."""
        self.epoch, self.start = epoch, start

    def _per_rank(self) -> int:
        return math.ceil(self.length / self.world.size)

    def __len__(self) -> int:
        return max(0, self._per_rank() - self.start)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self._per_rank() * self.world.size
        return iter(
            self._epoch_order(generator, total)[self.world.rank : total : self.world.size][
                self.start :
            ]
        )

    def _epoch_order(self, generator: torch.Generator, total: int) -> list[int]:
        """The epoch's ``total`` sample indices, dealt round robin by ``__iter__`` (subclasses draw others)."""
        torch.empty((), dtype=torch.int64).random_(
            generator=generator
        )  # the DataLoader's base-seed draw
        order = torch.randperm(self.length, generator=generator).tolist()
        return order + order[: total - len(order)]


class ShardSampler(Sampler[int]):
    """Evaluation: rank ``r`` takes samples ``r, r + size, ...``; each sample once, no padding."""

    def __init__(self, length: int, world: World = SINGLE_PROCESS) -> None:
        self.length, self.world = length, world

    def indices(self) -> range:
        return range(self.world.rank, self.length, self.world.size)

    def __len__(self) -> int:
        return len(self.indices())

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())


def broadcast_module(module: nn.Module) -> None:
    """Start every rank from rank 0's parameters and buffers (DDP does this when it wraps)."""
    if not current().distributed:
        return
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src=0)


def average_gradients(parameters: Sequence[torch.Tensor]) -> None:
    """Replace each ``.grad`` by its mean over all processes: one flat all-reduce per dtype/device.

    Parameters without a gradient are skipped; every rank runs the same code path, so the set
    is the same everywhere.
    """
    world = current()
    if not world.distributed:
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for param in parameters:
        if param.grad is not None:
            groups.setdefault((param.grad.dtype, param.grad.device), []).append(param.grad)
    for grads in groups.values():
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        dist.all_reduce(flat)
        flat /= world.size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on any process (one small all-reduce; ``flag`` itself on one process)."""
    if not current().distributed:
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value)
    return bool(value.item() > 0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (no-op on one process)."""
    if current().distributed:
        dist.all_reduce(tensor)
    return tensor


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (``[value]`` on one process)."""
    world = current()
    if not world.distributed:
        return [value]
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered


def interleave(per_rank: list[list[Any]]) -> list[Any]:
    """Undo :class:`ShardSampler`'s round robin: rank lists back into dataset order."""
    size = len(per_rank)
    out: list[Any] = [None] * sum(len(items) for items in per_rank)
    for rank, items in enumerate(per_rank):
        out[rank::size] = items
    return out
