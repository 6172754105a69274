"""Benchmark: the CPU training step with a caption (or region-set) pooling against the plain step.

    python bench/pool_step.py                                  # last vs gpo text pooling, paper sizes
    python bench/pool_step.py --pools last,mean,gpo --rounds 3 --steps 5 --profile gpo

Times a training step (the real model's forward, VSE++'s max-of-hinges loss, backward, clip 2.0, Adam) on
synthetic batches (random captions of --words +/- 2 words, random 1C features) for each --text-pool, in one
process, the order alternating per round so a change of machine load hits every pooling alike. With
--regions K the image side is a region set [B, K, D] pooled by --image-pool instead (text pooling "last").
--profile POOL prints torch.profiler's top operators of one step with that pooling.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.machine import print_machine  # noqa: E402
from bench.workload import add_model_arguments, synthetic_batch  # noqa: E402

from train.config import TrainConfig  # noqa: E402
from train.data import Batch  # noqa: E402
from train.model import VSEModel, build_model  # noqa: E402

MARGIN, GRAD_CLIP = 0.2, 2.0


def make_model(args: argparse.Namespace, pool: str) -> tuple[VSEModel, torch.optim.Optimizer]:
    """The model pooling captions (or, with --regions, region sets) with `pool`, seed 0 init, and its Adam."""
    torch.manual_seed(0)
    sets = {"feature_mode": "regions", "image_pool": pool} if args.regions else {"text_pool": pool}
    cfg = TrainConfig(embed_dim=args.embed_dim, word_dim=args.word_dim, batch_size=args.batch_size, device="cpu",
                      **sets)
    model = build_model(cfg, vocab_size=args.vocab_size, feature_dim=args.feature_dim)
    return model, torch.optim.Adam(model.parameters(), lr=2e-4)


def train_step(model: VSEModel, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
    """Forward, max-of-hinges loss (one image per caption: the diagonal is positive), backward, clip, Adam."""
    image_emb, caption_emb = model(batch.images, batch.tokens, batch.lengths, batch.image_lengths)
    sims = image_emb @ caption_emb.T  # [B, B]
    positive = sims.diagonal()
    off_diagonal = torch.eye(len(sims), dtype=torch.bool)
    cost_caption = (MARGIN + sims - positive[:, None]).clamp(min=0).masked_fill(off_diagonal, 0)
    cost_image = (MARGIN + sims - positive[None, :]).clamp(min=0).masked_fill(off_diagonal, 0)
    loss = cost_caption.max(dim=1).values.sum() + cost_image.max(dim=0).values.sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()


def region_batch(batch: Batch, rng: np.random.Generator, *, regions: int, drop: float) -> Batch:
    """`batch` with a random region set [B, K, D] per caption, sizes as a --region-drop of `drop` leaves them."""
    size = (len(batch), regions, batch.images.shape[1])
    lengths = np.maximum(1, rng.binomial(regions, 1 - drop, len(batch))) if drop else None
    return Batch(tokens=batch.tokens, lengths=batch.lengths, images=torch.from_numpy(rng.standard_normal(
        size, dtype=np.float32)), image_ids=batch.image_ids, caption_rows=batch.caption_rows,
        image_lengths=None if lengths is None else torch.from_numpy(lengths.astype(np.int64)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--pools", default="last,gpo", help="comma list of poolings to time (the first is the base)")
    parser.add_argument("--regions", type=int, default=0, help="K > 0: pool region sets of K vectors instead")
    parser.add_argument("--region-drop", type=float, default=0.2, help="with --regions: sizes as this drop leaves")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each timing")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per pooling and round")
    parser.add_argument("--rounds", type=int, default=2, help="repeat all poolings, order alternating")
    parser.add_argument("--profile", default="", help="print the top operators of one step with this pooling")
    args = parser.parse_args()
    pools = args.pools.split(",")
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    batches = [synthetic_batch(rng, batch_size=args.batch_size, words=args.words, vocab_size=args.vocab_size,
                               feature_dim=args.feature_dim) for _ in range(4)]
    if args.regions:
        batches = [region_batch(batch, rng, regions=args.regions, drop=args.region_drop) for batch in batches]
    seconds: dict[str, list[float]] = {pool: [] for pool in pools}
    models = {pool: make_model(args, pool) for pool in pools}
    for round_number in range(args.rounds):
        for pool in pools if round_number % 2 == 0 else pools[::-1]:
            for number in range(args.warmup + args.steps):
                start = time.process_time()  # CPU time: a shared machine's waits for a core do not count
                train_step(*models[pool], batches[number % len(batches)])
                if number >= args.warmup:
                    seconds[pool].append(time.process_time() - start)
    if args.profile:
        with torch.profiler.profile() as profiler:
            train_step(*models[args.profile], batches[0])
    print_machine()
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f} at the end; "
          f"batch {args.batch_size}, GRU {args.embed_dim}, {args.words}+/-2 words"
          + (f", {args.regions} regions (drop {args.region_drop})" if args.regions else ""))
    base = statistics.median(seconds[pools[0]])
    print(f"{'pool':>9s} {'median CPU s/step':>17s} {'min':>6s} {'x ' + pools[0]:>8s}")
    for pool in pools:
        median = statistics.median(seconds[pool])
        print(f"{pool:>9s} {median:17.3f} {min(seconds[pool]):6.3f} {median / base:8.2f}")
    if args.profile:
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
