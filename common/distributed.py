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
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MINUTES = 30.0  # a collective waiting longer than this (a dead or stuck rank) fails, never hangs
CHECK_IN_KEY = "vsepp/check-in/"  # + rank: a counter each rank's watch thread increments in the group's store
LAUNCHER_GRACE_S = 60.0  # after its launcher died, a rank has this long to stop as after Ctrl-C, then it exits


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
    start_watch(check_in_interval(timeout_minutes * 60))
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
    stop_watch()
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


def check_in_interval(timeout_s: float) -> float:
    """Seconds between a rank's check-ins: a twentieth of the collective timeout, within [0.1, 5]."""
    return min(max(timeout_s / 20, 0.1), 5.0)


class _Watch(threading.Thread):
    """Every rank's daemon thread: it checks in through the process group's store every `interval` seconds (so
    that a rank whose collective failed can name the ranks that stopped: unresponsive_ranks), and stops this
    rank when its launcher dies.

    torchrun starts its workers in sessions of their own, so a SIGKILL of the launcher's process group leaves
    them training with nobody to collect them; a rank whose parent changed (it was re-parented: the launcher is
    gone) interrupts itself as Ctrl-C does (train saves last.pt after the step and every rank stops at the same
    step), and exits after LAUNCHER_GRACE_S if that did not end it (a collective stuck on a dead peer).
    """

    def __init__(self, store: Any, *, rank: int, interval: float) -> None:
        super().__init__(name="rank-watch", daemon=True)
        self.store, self.rank, self.interval = store, rank, interval
        self.parent = os.getppid()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            if os.getppid() != self.parent:
                self.launcher_died()
                return
            with contextlib.suppress(Exception):  # a store that went away with rank 0: the launcher check decides
                self.store.add(CHECK_IN_KEY + str(self.rank), 1)

    def launcher_died(self) -> None:
        logger.error("rank %d: its launcher (pid %d) is gone; stopping this rank as after Ctrl-C", self.rank,
                     self.parent)
        os.kill(os.getpid(), signal.SIGINT)
        if not self.stopped.wait(LAUNCHER_GRACE_S):
            logger.error("rank %d: still running %.0f s after its launcher died; exiting", self.rank, LAUNCHER_GRACE_S)
            os._exit(1)


_WATCH: _Watch | None = None


def start_watch(interval: float) -> None:
    """Start this rank's watch thread on the process group's store (see _Watch)."""
    global _WATCH
    store = dist.distributed_c10d._get_default_store()  # the store the group rendezvoused through (torchrun's)
    _WATCH = _Watch(store, rank=dist.get_rank(), interval=interval)
    _WATCH.store.add(CHECK_IN_KEY + str(_WATCH.rank), 1)  # every rank's key exists before any check
    _WATCH.start()


def stop_watch() -> None:
    """Stop this rank's watch thread (a rank that leaves its group on purpose no longer checks in)."""
    global _WATCH
    if _WATCH is not None:
        _WATCH.stopped.set()
        _WATCH = None


def unresponsive_ranks(*, observe_s: float | None = None) -> list[int] | None:
    """The other ranks whose check-in counter did not move for `observe_s` seconds (default: 2.5 check-in
    intervals): stopped, killed or hung without their threads running. None when it cannot be known (no
    process group, or its store is gone)."""
    watch = _WATCH
    if watch is None or not dist.is_initialized():
        return None
    others = [rank for rank in range(dist.get_world_size()) if rank != watch.rank]
    try:
        before = [watch.store.add(CHECK_IN_KEY + str(rank), 0) for rank in others]
        watch.stopped.wait(2.5 * watch.interval if observe_s is None else observe_s)
        after = [watch.store.add(CHECK_IN_KEY + str(rank), 0) for rank in others]
    except Exception:  # the store's host (rank 0's launcher) is gone
        return None
    return [rank for rank, old, new in zip(others, before, after) if old == new]


def describe_failure(err: BaseException) -> str | None:
    """For an error of a distributed run: which ranks did not arrive, in words; None when every rank still checks
    in (the error is this rank's own) or it cannot be known."""
    missing = unresponsive_ranks()
    if not missing:
        return None
    names = ", ".join(str(rank) for rank in missing)
    return (f"rank(s) {names} did not arrive: they stopped checking in (stopped, killed or hung) while this rank "
            f"waited ({type(err).__name__}: {str(err).strip()[:300]}); see their logs (torchrun stops the job)")
