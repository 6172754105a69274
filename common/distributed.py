"""torch.distributed for the stages: the process group torchrun describes, the collectives the stages need,
and an all-gather whose gradient flows back to the rows each rank owns.

This is the one module that reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK; MASTER_ADDR and
MASTER_PORT are read by torch itself): that environment is torchrun's (and SLURM + torchrun's) contract.
A plain `python pipeline.py ...` has no WORLD_SIZE and runs as the single process it always was.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MINUTES = 30.0  # a collective waiting longer than this (a dead or stuck rank) fails, never hangs


@dataclass(frozen=True)
class Distributed:
    """Who this process is among the ranks of one job; every method is a no-op for a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the rank on this machine: the GPU index under torchrun

    @property
    def enabled(self) -> bool:
        """True when several processes share the work."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, metrics, logs and progress bars."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank has arrived here."""
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object), on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank (e.g. an interrupt seen by one of them)."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)], dtype=torch.int64)  # small collectives run on the CPU (gloo)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of `tensor` over the ranks (a new tensor; no gradient)."""
        if not self.enabled:
            return tensor.detach().clone()
        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total

    def gather_sizes(self, count: int) -> list[int]:
        """The row count of every rank, in rank order."""
        if not self.enabled:
            return [count]
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([count], dtype=torch.int64))
        return [int(size.item()) for size in sizes]

    def gather_rows(self, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate every rank's `tensor` [sizes[r], ...] in rank order -> [sum(sizes), ...].

        Differentiable: the gradient of the result is summed over the ranks and each rank keeps the part of
        its own rows, so a loss computed on gathered rows trains the rows where they came from.
        """
        if not self.enabled:
            return tensor
        return _GatherRows.apply(tensor, tuple(sizes), self.rank)

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on rank 0 first, then on the others (e.g. rank 0 writes a cache, the others read it)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


class _GatherRows(torch.autograd.Function):
    """all_gather of uneven row blocks (padded to the largest, then trimmed), with a summed gradient."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        longest = max(sizes)
        padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
        padded[:tensor.shape[0]] = tensor
        blocks = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(blocks, padded.contiguous())
        return torch.cat([block[:size] for block, size in zip(blocks, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss terms that reach this rank's rows
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None


_CURRENT = Distributed()


def current() -> Distributed:
    """This process's place in the job (a single process unless init_from_environment started a group)."""
    return _CURRENT


def torchrun_environment() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun with more than one process, else None."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    return int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0"))


def init_from_environment(*, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> Distributed:
    """Join the process group torchrun describes; idempotent; the single-process context outside torchrun.

    One group serves both devices: gloo for CPU tensors (small collectives, CPU training) and, when a GPU
    is present, NCCL for CUDA tensors, each rank on GPU LOCAL_RANK. A collective that waits longer than
    `timeout_minutes` fails instead of hanging.
    """
    global _CURRENT
    if _CURRENT.enabled:
        return _CURRENT
    environment = torchrun_environment()
    if environment is None:
        return _CURRENT
    rank, world_size, local_rank = environment
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=timeout_minutes))
    _CURRENT = Distributed(rank=rank, world_size=world_size, local_rank=local_rank)
    logger.info("rank %d of %d (local rank %d) joined the %s process group", rank, world_size, local_rank, backend)
    return _CURRENT


def shutdown(*, wait_for_others: bool = False) -> None:
    """Leave the process group; every process that joined one must, before the interpreter exits.

    Left to interpreter teardown, gloo's worker threads can outlive Python and abort the process (SIGABRT,
    "terminate called without an active exception") after all its work is done: seen in about 1 run in 10 of a
    two-rank extract. `wait_for_others` first waits at a barrier so that no rank closes its connections while
    another is still inside a collective; leave it off on an error path, where the others may never arrive.
    """
    global _CURRENT
    if dist.is_initialized():
        if wait_for_others:
            dist.barrier()
        dist.destroy_process_group()
    _CURRENT = Distributed()


def device_for(device: torch.device, context: Distributed) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK for a distributed cuda run, else `device`."""
    if device.type == "cuda" and context.enabled:
        return torch.device("cuda", context.local_rank)
    return device
