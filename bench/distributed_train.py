"""Benchmark: training steps/s and peak memory per rank, 1 process vs N ranks (gloo, CPU) at the same global batch.

    python bench/distributed_train.py                      # reference model, global batch 128: 1 rank vs 2 ranks
    python bench/distributed_train.py --batch-sizes 128,1024 --steps 3 --ranks 2

Each side runs the real TrainingStep (model + loss, in DistributedDataParallel for N > 1) with Adam and clip 2
on synthetic batches (random token ids, 12 +/- 2 words, random 2048-d features), in fresh processes spawned on
loopback: 1 process with all the machine's threads, or N ranks with threads / N each. Peak RSS is each
process's own maximum resident set (ru_maxrss), imports included. The losses' share of it is small: each rank
scores 2 x (B / N) x B similarities (4 MB at B = 1024, N = 2), against B x B in one process. The ranks also time
one all-reduce of a tensor the size of all gradients: the communication DDP adds to every step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.machine import print_machine  # noqa: E402
from common import distributed  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.data import Batch, RankShare, pad_token_ids  # noqa: E402
from train.losses import build_loss  # noqa: E402
from train.model import build_model  # noqa: E402
from train.step import TrainingStep, distributed_step  # noqa: E402


def synthetic_batch(batch_size: int, *, words: int, vocab_size: int, feature_dim: int, seed: int) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(words - 2, words + 3, (batch_size,), generator=generator)
    ids = [torch.randint(4, vocab_size, (int(length),), generator=generator).numpy() for length in lengths]
    tokens, token_lengths = pad_token_ids(ids)
    images = torch.randn(batch_size, feature_dim, generator=generator)
    return Batch(tokens=tokens, lengths=token_lengths, images=images, image_ids=torch.arange(batch_size),
                 caption_rows=torch.arange(batch_size))


def worker(rank: int, world_size: int, port: int, args: argparse.Namespace, batch_size: int, out: str) -> None:
    """Time `args.steps` steps after one warm-up on this rank's share; write (s/step, peak RSS MiB)."""
    torch.set_num_threads(max(1, args.threads // world_size))
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    context = distributed.init_from_environment(timeout_minutes=10)
    config = TrainConfig(store="synthetic", embed_dim=args.embed_dim, word_dim=args.word_dim, batch_size=batch_size)
    torch.manual_seed(0)
    model, loss = build_model(config, vocab_size=args.vocab_size, feature_dim=args.feature_dim), build_loss(config)
    step = distributed_step(TrainingStep(model, loss, autocast_dtype=None), torch.device("cpu"))
    optimizer = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=2e-4)
    batches = [synthetic_batch(batch_size, words=args.words, vocab_size=args.vocab_size,
                               feature_dim=args.feature_dim, seed=seed) for seed in range(args.steps + 1)]
    share = RankShare(context.rank, context.world_size)
    times = []
    for number, batch in enumerate(batches):
        mine = share.of(len(batch))
        local = Batch(tokens=batch.tokens[mine], lengths=batch.lengths[mine], images=batch.images[mine],
                      image_ids=batch.image_ids[mine], caption_rows=batch.caption_rows[mine])
        context.barrier()
        start = time.perf_counter()
        value, _ = step(local, epoch=1, step=number)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        context.barrier()
        if number:  # the first step warms up
            times.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"seconds": sorted(times)[len(times) // 2], "peak_mib": peak_mib}
    if world_size > 1:  # what DDP adds per step: one all-reduce of every gradient (in buckets, beside backward)
        gradients = torch.zeros(sum(parameter.numel() for parameter in model.parameters()))
        spans = []
        for _ in range(3):
            context.barrier()
            start = time.perf_counter()
            torch.distributed.all_reduce(gradients)
            spans.append(time.perf_counter() - start)
        result.update(allreduce_seconds=sorted(spans)[1], gradient_mib=gradients.numel() * 4 / 2**20)
    Path(f"{out}.{rank}").write_text(json.dumps(result))
    distributed.shutdown(wait_for_others=True)


def run_side(world_size: int, args: argparse.Namespace, batch_size: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "result")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        mp.start_processes(worker, args=(world_size, port, args, batch_size, out), nprocs=world_size,
                           start_method="spawn")
        return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(world_size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the distributed side")
    parser.add_argument("--batch-sizes", default="128", help="global batch sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side (after one warm-up)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads shared by the ranks")
    parser.add_argument("--embed-dim", type=int, default=1024)
    parser.add_argument("--word-dim", type=int, default=300)
    parser.add_argument("--feature-dim", type=int, default=2048)
    parser.add_argument("--vocab-size", type=int, default=10000)
    parser.add_argument("--words", type=int, default=12)
    args = parser.parse_args()
    print_machine()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"load {os.getloadavg()[0]:.2f}; GRU {args.embed_dim}, word {args.word_dim}, features {args.feature_dim}")
    print(f"{'global batch':>12} {'ranks':>5} {'s/step':>8} {'steps/s':>8} {'peak MiB per rank':>20}")
    for batch_size in [int(value) for value in args.batch_sizes.split(",")]:
        single = run_side(1, args, batch_size)
        several = run_side(args.ranks, args, batch_size)
        for world, results in ((1, single), (args.ranks, several)):
            seconds = max(result["seconds"] for result in results)
            peaks = ", ".join(f"{result['peak_mib']:.0f}" for result in results)
            print(f"{batch_size:>12} {world:>5} {seconds:>8.3f} {1 / seconds:>8.2f} {peaks:>20}")
        communication = (f"; all-reduce of the {several[0]['gradient_mib']:.0f} MiB of gradients alone: "
                         f"{max(r['allreduce_seconds'] for r in several):.3f} s" if args.ranks > 1 else "")
        print(f"{'':>12} ratio {args.ranks} ranks / 1 process steps/s: "
              f"{max(r['seconds'] for r in single) / max(r['seconds'] for r in several):.2f}{communication}")
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
