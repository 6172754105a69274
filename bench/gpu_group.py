"""The nccl section of bench/gpu_check.py, run under torchrun: one rank's process group (gloo + NCCL on a GPU),
its collectives, the all-gather with gradient, and a DistributedDataParallel step against the plain step.

    torchrun --standalone --nproc-per-node 1 bench/gpu_group.py RESULT.json [--dry-run]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.gpu_check import DRY_SIZES, Sizes, reference_parts  # noqa: E402
from common import distributed  # noqa: E402
from train.losses import build_loss  # noqa: E402
from train.model import build_model  # noqa: E402
from train.step import TrainingStep, distributed_step  # noqa: E402


class _GroupOfOne(distributed.Distributed):
    """A world of one that uses its process group: the pipeline runs one process without a group, so the
    check poses as a group to send every collective and DDP's gradient hook through gloo / NCCL."""

    @property
    def enabled(self) -> bool:
        return True


def main(out: str, dry_run: bool) -> None:
    """Under torchrun: the process group of one rank, its collectives, and a DDP step against the plain step."""
    cuda = torch.cuda.is_available() and not dry_run
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    sizes = DRY_SIZES if dry_run else Sizes()
    config, batches = reference_parts(sizes, sizes.train_batch, sizes.feature_dim)
    batch = batches[0].to(device)
    torch.manual_seed(0)
    model, loss = build_model(config, vocab_size=sizes.vocab_size, feature_dim=sizes.feature_dim), build_loss(config)
    model, loss = model.to(device), loss.to(device)
    plain_value, _ = TrainingStep(model, loss, autocast_dtype=None)(batch, epoch=1, step=0)
    plain_value.backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(device)  # NCCL's object collectives run on the current device
    torch.distributed.init_process_group(backend=backend, rank=int(os.environ["RANK"]),
                                         world_size=int(os.environ["WORLD_SIZE"]))
    distributed._CURRENT = _GroupOfOne(rank=0, world_size=1, local_rank=device.index or 0)
    group = distributed.current()
    rows = torch.arange(6.0, device=device).reshape(3, 2).requires_grad_()
    gathered = group.gather_rows(rows, group.gather_sizes(3))
    (gathered * 2).sum().backward()
    checks = {"sum": float(group.sum(torch.ones(2, device=device)).sum()), "any": group.any(True),
              "broadcast": group.broadcast({"a": 1}), "gather_rows_equal": bool(torch.equal(gathered, rows)),
              "gather_rows_grad": float(rows.grad.sum())}
    value, _ = distributed_step(TrainingStep(model, loss, autocast_dtype=None), device)(batch, epoch=1, step=0)
    value.backward()
    worst = max(float((p.grad - g).abs().max()) for p, g in zip(model.parameters(), plain_grads))
    group.barrier()
    distributed.shutdown(wait_for_others=True)
    Path(out).write_text(json.dumps({"backend": backend, "world_size": int(os.environ["WORLD_SIZE"]),
                                     "nccl_version": str(torch.cuda.nccl.version()) if cuda else None,
                                     "collectives": checks, "loss_plain": plain_value.item(),
                                     "loss_group": value.item(), "max_grad_difference": worst}))


if __name__ == "__main__":
    main(sys.argv[1], "--dry-run" in sys.argv[2:])
