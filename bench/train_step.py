"""Benchmark: one training step with a packed nn.GRU (reference style) vs train.gru.PackedGRU, alternated;
or (--compare amp) the PackedGRU step in float32 vs under bf16 autocast (--amp bf16).

    python bench/train_step.py                    # batch 128, GRU 1024, word 300, 2048-d features, 12+/-2 words
    python bench/train_step.py --rounds 12 --steps 2 --threads 2 --profile-steps 3
    python bench/train_step.py --compare amp      # (a) PackedGRU float32 vs (b) PackedGRU under bf16 autocast

Both sides run the step of the VSE++ paper, written here from its description so that the bench depends on
nothing of ours but train/gru.py: Embedding -> GRU over the true tokens -> last state -> L2 norm for captions;
Linear(feature_dim, embed_dim) -> L2 norm for precomputed image features; MH loss = sum over the batch of the
hardest (max-violation) hinge, margin 0.2, in both directions; backward; gradient-norm clip 2.0; Adam lr 2e-4.
(a) packs the embedded captions (pack_padded_sequence, enforce_sorted=False) into nn.GRU; (b) is the same step
with PackedGRU. Side (b) starts from (a)'s weights (the state_dict loads unchanged), both sides take the same
synthetic batches (random token ids, captions of --words +/- 2 words plus <start>/<end>, random float32 features,
one image per caption) in the same order, and before timing one step's loss and gradients are compared.

Timing alternates the sides inside one process: each round runs --steps steps of one side, then of the other,
the order swapped every round, so a change of machine load hits both alike; the per-round ratio a/b is paired.
The FLOP estimate counts the matrix products only (GRU gates over the true tokens, image projection,
similarity matrix), forward + backward = 3x forward, the same nominal count for both sides (PackedGRU skips
the exact-zero products of h0 = 0 in the first step, ~5% of it). A torch.profiler table (top ops by self CPU
time) follows for each side. With CUDA (--device auto picks it when present) PackedGRU runs nn.GRU (cuDNN)
itself, so (b) would time the same code as (a): it is skipped and only (a) is timed.

With --compare amp both sides use PackedGRU; (b) runs the encoders under torch.autocast(bfloat16) as the trainer
does with --amp bf16 (the GRU's products in bf16, its gate math and the loss in float32), and the first-step
comparison gives bf16's error on the loss and the gradients. The GFLOP/s column counts the same nominal FLOP.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.machine import print_machine  # noqa: E402
from bench.workload import add_model_arguments, step_gflop  # noqa: E402
from train.gru import PackedGRU  # noqa: E402

START_ID, END_ID, FIRST_WORD_ID = 1, 2, 4  # <pad>=0, <start>=1, <end>=2, <unk>=3, then words
WORD_INIT_RANGE = 0.1  # reference: word embeddings uniform in [-0.1, 0.1]
MARGIN, LEARNING_RATE, GRAD_CLIP = 0.2, 2e-4, 2.0  # paper: margin 0.2, Adam lr 2e-4, clip 2


@dataclass
class Batch:
    tokens: torch.Tensor               # int64 [B, T], 0-padded
    lengths: torch.Tensor              # int64 [B] on the CPU, tokens incl. <start>/<end>
    features: torch.Tensor             # float32 [B, D], one image per caption
    image_ids: torch.Tensor            # int64 [B]: the image of each row (here all distinct)


def synthetic_batch(generator: torch.Generator, *, batch_size: int, words: int, vocab_size: int,
                    feature_dim: int, device: torch.device) -> Batch:
    """Captions of words-2..words+2 random ids between <start> and <end>, random features, on `device`."""
    lengths = torch.randint(max(words - 2, 1), words + 3, (batch_size,), generator=generator) + 2
    tokens = torch.zeros(batch_size, int(lengths.max()), dtype=torch.int64)
    for row, length in enumerate(lengths.tolist()):
        tokens[row, 0], tokens[row, length - 1] = START_ID, END_ID
        tokens[row, 1:length - 1] = torch.randint(FIRST_WORD_ID, vocab_size, (length - 2,), generator=generator)
    features = torch.randn(batch_size, feature_dim, generator=generator)
    return Batch(tokens=tokens.to(device), lengths=lengths, features=features.to(device),
                 image_ids=torch.arange(batch_size, device=device))


class CaptionEncoder(nn.Module):
    """Token ids [B, T] + lengths [B] -> L2-normalised last GRU state [B, E]; gru "nn" (packed) or "packed"."""

    def __init__(self, vocab_size: int, *, word_dim: int, embed_dim: int, gru: str) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        nn.init.uniform_(self.embed.weight, -WORD_INIT_RANGE, WORD_INIT_RANGE)
        self.gru = nn.GRU(word_dim, embed_dim, batch_first=True) if gru == "nn" else PackedGRU(word_dim, embed_dim)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        words = self.embed(tokens)
        if isinstance(self.gru, PackedGRU):
            _, last_state = self.gru(words, lengths)
        else:
            packed = pack_padded_sequence(words, lengths, batch_first=True, enforce_sorted=False)
            last_state = self.gru(packed)[1][0]  # h_n [1, B, E] in input order -> [B, E]
        return F.normalize(last_state, dim=-1)


class ImageEncoder(nn.Module):
    """Precomputed features [B, D] -> Linear (Xavier init, as the reference) -> L2 norm -> [B, E]."""

    def __init__(self, feature_dim: int, *, embed_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(feature_dim, embed_dim)
        bound = math.sqrt(6.0) / math.sqrt(feature_dim + embed_dim)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(features), dim=-1)


def mh_loss(image_emb: torch.Tensor, caption_emb: torch.Tensor, image_ids: torch.Tensor,
            *, margin: float = MARGIN) -> torch.Tensor:
    """MH (VSE++): sum over the batch of the hardest negative's hinge, both directions -> scalar.

    image_emb [B, E] with row b = the image of caption b, caption_emb [B, E], image_ids [B] (which image
    each row shows: rows of one image are positives of each other, never negatives). sims [B, B].
    """
    sims = image_emb @ caption_emb.t()
    positive = sims.diagonal()  # s(i_b, c_b): image row b belongs to caption b
    positive_mask = image_ids.unsqueeze(1) == image_ids.unsqueeze(0)
    cost_caption = (margin + sims - positive.unsqueeze(1)).clamp(min=0).masked_fill(positive_mask, 0)
    cost_image = (margin + sims - positive.unsqueeze(0)).clamp(min=0).masked_fill(positive_mask, 0)
    return cost_caption.max(dim=1).values.sum() + cost_image.max(dim=0).values.sum()


@dataclass
class Side:
    name: str
    captions: CaptionEncoder
    images: ImageEncoder
    optimizer: torch.optim.Optimizer
    autocast: torch.dtype | None = None  # the encoders' autocast dtype (the loss stays float32), None = off

    def parameters(self) -> list[nn.Parameter]:
        return list(self.images.parameters()) + list(self.captions.parameters())


def build_side(name: str, *, gru: str, args: argparse.Namespace, device: torch.device,
               autocast: torch.dtype | None = None) -> Side:
    """Fresh encoders of the sizes in `args` and their Adam (lr 2e-4), with the GRU kind `gru`."""
    captions = CaptionEncoder(args.vocab_size, word_dim=args.word_dim, embed_dim=args.embed_dim, gru=gru).to(device)
    images = ImageEncoder(args.feature_dim, embed_dim=args.embed_dim).to(device)
    params = list(images.parameters()) + list(captions.parameters())
    return Side(name, captions, images, torch.optim.Adam(params, lr=LEARNING_RATE), autocast)


def build_sides(args: argparse.Namespace, device: torch.device) -> list[Side]:
    """The sides of --compare, (b) starting from (a)'s weights: gru = packed nn.GRU and PackedGRU (the latter on
    the CPU only), amp = PackedGRU in float32 and under bf16 autocast."""
    if args.compare == "amp":
        sides = [build_side("(a) PackedGRU fp32", gru="packed", args=args, device=device),
                 build_side("(b) PackedGRU bf16", gru="packed", args=args, device=device, autocast=torch.bfloat16)]
    else:
        sides = [build_side("(a) packed nn.GRU", gru="nn", args=args, device=device)]
        if device.type == "cpu":
            sides.append(build_side("(b) PackedGRU", gru="packed", args=args, device=device))
    for side in sides[1:]:
        side.captions.load_state_dict(sides[0].captions.state_dict())  # nn.GRU's keys load unchanged
        side.images.load_state_dict(sides[0].images.state_dict())
    return sides


def loss_and_backward(side: Side, batch: Batch) -> torch.Tensor:
    """Zero the gradients, forward both encoders, MH loss, backward; returns the loss tensor."""
    side.optimizer.zero_grad(set_to_none=True)
    with record_function("step: forward + loss"):
        with torch.autocast(batch.features.device.type, dtype=side.autocast, enabled=side.autocast is not None):
            image_emb, caption_emb = side.images(batch.features), side.captions(batch.tokens, batch.lengths)
        loss = mh_loss(image_emb.float(), caption_emb.float(), batch.image_ids)
    with record_function("step: backward"):
        loss.backward()
    return loss


def train_step(side: Side, batch: Batch) -> float:
    """Forward, MH loss, backward, clip, Adam; returns the loss (a host sync, so timings are complete)."""
    loss = loss_and_backward(side, batch)
    with record_function("step: clip + Adam"):
        nn.utils.clip_grad_norm_(side.parameters(), GRAD_CLIP)
        side.optimizer.step()
    return loss.item()


def compare_first_step(a: Side, b: Side, batch: Batch) -> str:
    """Loss and gradients of both sides on one batch from the same weights (no optimizer step)."""
    losses, grads = [], []
    for side in (a, b):
        losses.append(loss_and_backward(side, batch).item())
        grads.append([param.grad.clone() for param in side.parameters()])
        side.optimizer.zero_grad(set_to_none=True)
    worst = max(float((ga - gb).abs().max() / gb.abs().max().clamp(min=1e-30)) for ga, gb in zip(*grads))
    return (f"first step from the same weights: loss (a) {losses[0]:.6f}, (b) {losses[1]:.6f}; "
            f"max |grad a - grad b| / max |grad b| over parameters {worst:.1e}")


def timed_steps(side: Side, batches: list[Batch], first: int, count: int,
                device: torch.device) -> list[tuple[float, float]]:
    """(wall s, process CPU s) of `count` steps on batches first, first + 1, ... (cycling)."""
    seconds = []
    for number in range(first, first + count):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        train_step(side, batches[number % len(batches)])
        seconds.append((time.perf_counter() - start, time.process_time() - start_cpu))
    return seconds


def profile_table(side: Side, batches: list[Batch], *, steps: int, rows: int, device: torch.device) -> str:
    """Time per step of the step's regions, then the top ops by self CPU time, over `steps` profiled steps."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for number in range(steps):
            train_step(side, batches[number % len(batches)])
    events = prof.key_averages()
    regions = [event for event in events if event.key.startswith("step: ")]
    summary = ", ".join(f"{event.key[6:]} {event.cpu_time_total / 1e3 / steps:.0f} ms"
                        for event in sorted(regions, key=lambda event: event.key))
    table = events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=44)
    return f"per step under the profiler: {summary}\n{table}"


def describe(seconds: list[float], cpu_seconds: list[float], gflop: float) -> str:
    """One table row: median, mean, min s/step, GFLOP/s at the median, median process CPU s/step."""
    median = statistics.median(seconds)
    return (f"{median:13.3f} {statistics.mean(seconds):11.3f} {min(seconds):10.3f} {gflop / median:8.1f} "
            f"{statistics.median(cpu_seconds):10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side before the rounds")
    parser.add_argument("--rounds", type=int, default=10, help="rounds; each times both sides, order alternating")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per side and round")
    parser.add_argument("--batches", type=int, default=4, help="distinct synthetic batches, cycled")
    parser.add_argument("--profile-steps", type=int, default=2, help="profiled steps per side (0: no profile)")
    parser.add_argument("--profile-rows", type=int, default=15, help="rows of each profiler table")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", choices=("gru", "amp"), default="gru",
                        help="gru: (a) packed nn.GRU vs (b) PackedGRU; amp: (a) PackedGRU float32 vs (b) under bf16")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print_machine()
    load_before = os.getloadavg()[0]

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    batches = [synthetic_batch(generator, batch_size=args.batch_size, words=args.words, vocab_size=args.vocab_size,
                               feature_dim=args.feature_dim, device=device) for _ in range(args.batches)]
    sides = build_sides(args, device)
    if len(sides) == 2:
        print(compare_first_step(sides[0], sides[1], batches[0]))
    else:
        print("CUDA: PackedGRU runs nn.GRU (cuDNN) there, so side (b) would time the same code as (a); skipped")

    for side in sides:
        timed_steps(side, batches, 0, args.warmup, device)
    timings: dict[str, list[tuple[float, float]]] = {side.name: [] for side in sides}
    round_ratios = []
    for round_number in range(args.rounds):
        first = args.warmup + round_number * args.steps  # both sides take the same batches this round
        order = sides if round_number % 2 == 0 else sides[::-1]
        medians = {}
        for side in order:
            pairs = timed_steps(side, batches, first, args.steps, device)
            timings[side.name] += pairs
            medians[side.name] = statistics.median(wall for wall, _ in pairs)
        if len(sides) == 2:
            round_ratios.append(medians[sides[0].name] / medians[sides[1].name])
    load_after = os.getloadavg()[0]

    gflop = statistics.mean(sum(step_gflop(batch.lengths, word_dim=args.word_dim, embed_dim=args.embed_dim,
                                           feature_dim=args.feature_dim).values()) for batch in batches)
    parts = step_gflop(batches[0].lengths, word_dim=args.word_dim, embed_dim=args.embed_dim, feature_dim=args.feature_dim)
    print(f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs, device "
          f"{device.type}, {torch.get_num_threads()} torch threads; 1-min load average {load_before:.2f} before, "
          f"{load_after:.2f} after")
    print(f"model: GRU {args.embed_dim}, word dim {args.word_dim}, {args.feature_dim}-d features, vocab "
          f"{args.vocab_size}; batch {args.batch_size}, {args.words}+/-2 words + <start>/<end>; MH, Adam, clip 2")
    print(f"estimate: {gflop:.1f} GFLOP per step (GRU {parts['gru']:.1f}, image head {parts['image_head']:.1f}, "
          f"sims {parts['sims']:.2f}; batch 0)")
    print(f"{args.rounds} rounds x {args.steps} timed steps per side after {args.warmup} warm-up, order alternating")
    print(f"{'side':20s} {'median s/step':>13s} {'mean s/step':>11s} {'min s/step':>10s} {'GFLOP/s':>8s} "
          f"{'CPU s/step':>10s}")
    # CPU s/step = process CPU time (all threads) per step: wall >> CPU / threads means other processes had the cores
    for side in sides:
        print(f"{side.name:20s} " + describe([wall for wall, _ in timings[side.name]],
                                             [cpu for _, cpu in timings[side.name]], gflop))
    if len(sides) == 2:
        a_median = statistics.median(wall for wall, _ in timings[sides[0].name])
        b_median = statistics.median(wall for wall, _ in timings[sides[1].name])
        print(f"ratio (a)/(b): {a_median / b_median:.2f}x from the medians; per-round paired ratios: median "
              f"{statistics.median(round_ratios):.2f}x, range {min(round_ratios):.2f}-{max(round_ratios):.2f}x")
    for side in sides if args.profile_steps > 0 else []:
        print(f"\nprofile of {side.name}, {args.profile_steps} steps, top ops by self CPU time:")
        print(profile_table(side, batches, steps=args.profile_steps, rows=args.profile_rows, device=device))


if __name__ == "__main__":
    main()
