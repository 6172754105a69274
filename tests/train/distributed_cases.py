"""Shared by the distributed tests and their spawned workers: one global batch, the losses to check, a launcher."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.multiprocessing as mp

from train.config import TrainConfig
from train.data import Batch, RankShare, pad_token_ids
from train.losses import build_loss
from train.losses.hinge import HingeLoss
from train.model import build_model

VOCAB, FEATURE_DIM, GLOBAL_BATCH = 30, 12, 7  # 7 pairs over 2 ranks: shares of 4 and 3
IMAGE_IDS = [5, 2, 5, 9, 2, 7, 5]  # image 5 on both ranks, image 2 on both: duplicates are never negatives
LOSS_CASES: dict[str, dict] = {
    "sh": {"loss": "sh"},
    "mh": {"loss": "mh"},
    "mh-mean": {"loss": "mh", "reduction": "mean"},
    "order": {"loss": "mh", "similarity": "order", "margin": 0.05, "abs_embeddings": True},
    "lseh": {"loss": "mh", "margin_source": "lseh", "margin": 0.185},
    "group-adaptive": {"loss": "group"},
    "group-constant": {"loss": "group", "group_k_mode": "constant", "group_k": 2},
    "group-random": {"loss": "group", "group_k_mode": "random"},
    "infonce": {"loss": "infonce"},
}


def global_batch() -> Batch:
    """The same 7 pairs in every process: captions of 2..6 tokens, one image feature each."""
    generator = np.random.default_rng(0)
    ids = [generator.integers(4, VOCAB, length) for length in (3, 6, 2, 5, 4, 6, 3)]
    tokens, lengths = pad_token_ids(ids)
    images = torch.from_numpy(generator.standard_normal((GLOBAL_BATCH, FEATURE_DIM)).astype(np.float32))
    return Batch(tokens=tokens, lengths=lengths, images=images, image_ids=torch.tensor(IMAGE_IDS),
                 caption_rows=torch.tensor([11, 3, 0, 8, 14, 6, 2]))


def share_of(batch: Batch, share: RankShare) -> Batch:
    """This rank's block of the global batch."""
    mine = share.of(len(batch))
    return Batch(tokens=batch.tokens[mine], lengths=batch.lengths[mine], images=batch.images[mine],
                 image_ids=batch.image_ids[mine], caption_rows=batch.caption_rows[mine])


def model_and_loss(case: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The seeded tiny model and the loss of a case (LSEH with fixed semantic vectors of 15 captions)."""
    config = TrainConfig(store="s", embed_dim=16, word_dim=8, text_pool="mean", **LOSS_CASES[case])
    torch.manual_seed(0)
    model = build_model(config, vocab_size=VOCAB, feature_dim=FEATURE_DIM)
    if config.margin_source == "lseh":
        vectors = np.random.default_rng(1).random((15, 6)).astype(np.float32)
        loss = HingeLoss(similarity=config.similarity, max_violation=True, margin=config.margin,
                         semantic_vectors=vectors, lseh_lambda=config.lseh_lambda)
    else:
        loss = build_loss(config)
    return model, loss


def launcher(ranks: int) -> list[str]:
    """The command prefix that runs a script with `ranks` processes: torchrun for more than one, on loopback.

    `--standalone` lets torchrun's own rendezvous bind a free port, so no other process can take the port
    between choosing and binding it, as it could with --master-port and a port chosen by the test.
    """
    if ranks == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]


def join_rank_environment(rank: int, world_size: int, port: int) -> None:
    """What torchrun sets for a worker, on loopback: the ranks join the store of `rendezvous_store` as clients
    (torchrun's agent store), none of them binds a port."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_RESTART_COUNT="0")


@contextlib.contextmanager
def rendezvous_store() -> Iterator[int]:
    """The port of a TCP store this process binds (a free port, chosen by the OS) and holds while the ranks run, so
    no other process can take the port between its choice and the ranks' rendezvous."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    try:
        yield store.port
    finally:
        del store


def spawn(worker: Callable, args: tuple, *, world_size: int = 2, timeout_s: float = 120.0) -> None:
    """Run worker(rank, *args) in `world_size` spawned processes; kill them all past the timeout."""
    context = mp.start_processes(worker, args=args, nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"distributed workers still running after {timeout_s} s")


def loss_gradients(step_module: torch.nn.Module, model: torch.nn.Module, loss: torch.nn.Module,
                   batch: Batch) -> dict:
    """One forward + backward of a training step -> loss value, logs and every parameter's gradient."""
    output = step_module(batch, epoch=1, step=3)
    output.loss.backward()
    grads = {f"model.{name}": p.grad.clone() for name, p in model.named_parameters()}
    grads.update({f"loss.{name}": p.grad.clone() for name, p in loss.named_parameters()})
    return {"loss": output.loss.item(), "logs": output.logs, "grads": grads}


def loss_worker(rank: int, world_size: int, port: int, out_path: str, device_type: str = "cpu") -> None:
    """Every case's loss and gradients on this rank's share, through DDP; rank 0 saves them (on the CPU)."""
    from common import distributed
    from train.step import TrainingStep, distributed_step

    torch.set_num_threads(1)
    join_rank_environment(rank, world_size, port)
    context = distributed.init_from_environment(timeout_minutes=2)
    device = distributed.device_for(torch.device(device_type), context)
    results = {}
    batch = share_of(global_batch(), RankShare(context.rank, context.world_size)).to(device)
    for case in LOSS_CASES:
        model, loss = model_and_loss(case)
        model, loss = model.to(device), loss.to(device)
        step = distributed_step(TrainingStep(model, loss, autocast_dtype=None), device)
        found = loss_gradients(step, model, loss, batch)
        results[case] = {**found, "grads": {name: grad.cpu() for name, grad in found["grads"].items()}}
    if context.is_main:
        torch.save(results, out_path)
    distributed.shutdown(wait_for_others=True)
