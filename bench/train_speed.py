"""Benchmark (c): training steps/s of the reference model on the CPU, torch threads 1 vs 2 side by side.

    python bench/train_speed.py                           # batch 128, GRU 1024, word 300, 2048-d 1C, 12 words
    python bench/train_speed.py --threads 1,2 --rounds 2 --steps 10 --warmup 2

Times the real `Trainer.train_step` (forward, MH loss, backward, clip 2.0, Adam) on synthetic batches
(random token ids, captions of --words words +/- 2 plus <start>/<end>, random float32 features, one image
per caption), so no store is read. All thread counts run in this one process; with --rounds > 1 the order
alternates (1,2 then 2,1, ...) so a change of machine load hits both alike. The FLOP estimate counts the
matrix products only (GRU gates, image projection, similarity matrix), forward + backward = 3x forward.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.machine import print_machine  # noqa: E402
from bench.workload import add_model_arguments, step_gflop, synthetic_batch  # noqa: E402

from train.config import TrainConfig  # noqa: E402
from train.data import Batch  # noqa: E402
from train.losses import build_loss  # noqa: E402
from train.model import build_model  # noqa: E402
from train.text import SPECIAL_TOKENS, Vocabulary  # noqa: E402
from train.trainer import Trainer  # noqa: E402



def time_steps(trainer: Trainer, batches: list[Batch], *, threads: int, warmup: int,
               steps: int) -> list[tuple[float, float]]:
    """(wall s, process CPU s) of each of `steps` train_step calls after `warmup` untimed ones."""
    torch.set_num_threads(threads)
    for number in range(warmup):
        trainer.train_step(batches[number % len(batches)])
    seconds = []
    for number in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        trainer.train_step(batches[number % len(batches)])
        seconds.append((time.perf_counter() - start, time.process_time() - start_cpu))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--loss", default="mh", help="training loss (paper: mh)")
    parser.add_argument("--threads", default="1,2", help="comma list of torch thread counts")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each timing")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per thread count and round")
    parser.add_argument("--rounds", type=int, default=1, help="repeat all thread counts, order alternating")
    args = parser.parse_args()
    thread_counts = [int(value) for value in args.threads.split(",")]

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = TrainConfig(embed_dim=args.embed_dim, word_dim=args.word_dim, batch_size=args.batch_size,
                      feature_mode="1c", loss=args.loss, device="cpu")
    vocab = Vocabulary(list(SPECIAL_TOKENS) + [f"w{number}" for number in range(args.vocab_size - len(SPECIAL_TOKENS))])
    model = build_model(cfg, vocab_size=len(vocab), feature_dim=args.feature_dim)
    batches = [synthetic_batch(rng, batch_size=args.batch_size, words=args.words, vocab_size=len(vocab),
                               feature_dim=args.feature_dim) for _ in range(4)]
    with tempfile.TemporaryDirectory() as out_dir:  # train_step writes nothing; the Trainer wants a folder
        trainer = Trainer(model, build_loss(cfg), config=cfg, batches=None, validate=lambda _: {}, out_dir=out_dir, vocab=vocab,
                          model_spec={}, device="cpu")
        timings: dict[int, list[tuple[float, float]]] = {threads: [] for threads in thread_counts}
        for round_number in range(args.rounds):
            order = thread_counts if round_number % 2 == 0 else thread_counts[::-1]
            for threads in order:
                timings[threads] += time_steps(trainer, batches, threads=threads, warmup=args.warmup,
                                               steps=args.steps)

    seconds = {threads: [wall for wall, _ in pairs] for threads, pairs in timings.items()}
    cpu_seconds = {threads: [cpu for _, cpu in pairs] for threads, pairs in timings.items()}
    gflop = [sum(step_gflop(batch.lengths, word_dim=args.word_dim, embed_dim=args.embed_dim,
                            feature_dim=args.feature_dim).values()) for batch in batches]
    parts = step_gflop(batches[0].lengths, word_dim=args.word_dim, embed_dim=args.embed_dim, feature_dim=args.feature_dim)
    mean_gflop = statistics.mean(gflop)
    print_machine()
    print(f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"model: GRU {args.embed_dim}, word dim {args.word_dim}, {args.feature_dim}-d 1C features, vocab "
          f"{len(vocab)}, loss {args.loss}; batch {args.batch_size}, {args.words}+/-2 words + <start>/<end>")
    print(f"estimate: {mean_gflop:.1f} GFLOP per step (GRU {parts['gru']:.1f}, image head "
          f"{parts['image_head']:.1f}, sims {parts['sims']:.2f}; batch 0)")
    print(f"{args.rounds} round(s) x {args.steps} timed steps after {args.warmup} warm-up, per thread count")
    print(f"{'threads':>7s} {'median s/step':>13s} {'mean s/step':>11s} {'min s/step':>10s} "
          f"{'steps/s':>7s} {'GFLOPS':>6s} {'CPU s/step':>10s}")
    # CPU s/step = process CPU time (all threads) per step: wall >> CPU / threads means the cores were busy
    # with other processes during the run.
    for threads in thread_counts:
        median = statistics.median(seconds[threads])
        print(f"{threads:7d} {median:13.3f} {statistics.mean(seconds[threads]):11.3f} "
              f"{min(seconds[threads]):10.3f} {1 / median:7.2f} {mean_gflop / median:6.1f} "
              f"{statistics.median(cpu_seconds[threads]):10.3f}")
    if len(thread_counts) > 1:
        first, last = thread_counts[0], thread_counts[-1]
        print(f"speed-up {last} vs {first} threads (median): "
              f"{statistics.median(seconds[first]) / statistics.median(seconds[last]):.2f}x")


if __name__ == "__main__":
    main()
