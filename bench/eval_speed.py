"""Benchmark (a): vectorised coco-5k evaluation vs a per-query argsort loop like the reference VSE++ code.

Run: python bench/eval_speed.py [--num-images 5000 --captions-per-image 5 --dim 1024]
Both sides start from the embeddings (both compute their similarities). The naive loop is timed on a
random subset of queries and extrapolated linearly to all queries (each query costs the same: one
dot product over the whole gallery and one argsort); the output says so. On that subset the naive ranks
are compared with ours, query by query: on identical similarity values, and on the loop's own dot products.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

# numpy's OpenBLAS thread pool makes one small per-query GEMV ~20x slower on a busy machine (measured here:
# 15 ms vs 0.7 ms for 256 x 5000); one thread is the naive loop's best case, so the comparison stays fair.
# Set before numpy loads; torch's matmul (ours) uses its own MKL/OpenMP threads and is unaffected.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from eval.metrics import ranks_i2t, ranks_t2i, recall_metrics, summarise_ranks  # noqa: E402
from eval.protocols import evaluate_protocol, similarity_matrix  # noqa: E402


def random_unit_rows(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((count, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class Stopwatch:
    """Accumulates the seconds spent inside `with stopwatch.part(name):` blocks."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def part(self, name: str) -> "Stopwatch":
        self._name = name
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc_info) -> None:
        self.seconds[self._name] = self.seconds.get(self._name, 0.0) + time.perf_counter() - self._start


def naive_i2t_ranks(sims_of, captions_of: list[np.ndarray], queries: np.ndarray, watch: Stopwatch) -> np.ndarray:
    """Reference-style caption retrieval: per image, its similarity row, argsort, best positive's position."""
    ranks = np.empty(len(queries), dtype=np.int64)
    for row, image in enumerate(queries):
        with watch.part("dot"):
            sims = sims_of(image)
        with watch.part("argsort"):
            order = np.argsort(sims)[::-1]
            ranks[row] = min(np.where(order == caption)[0][0] for caption in captions_of[image]) + 1
    return ranks


def naive_t2i_ranks(sims_of, caption_image_index: np.ndarray, queries: np.ndarray, watch: Stopwatch) -> np.ndarray:
    """Reference-style image retrieval: per caption, its similarity column, argsort, its image's position."""
    ranks = np.empty(len(queries), dtype=np.int64)
    for row, caption in enumerate(queries):
        with watch.part("dot"):
            sims = sims_of(caption)
        with watch.part("argsort"):
            order = np.argsort(sims)[::-1]
            ranks[row] = np.where(order == caption_image_index[caption])[0][0] + 1
    return ranks


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=5000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--naive-image-queries", type=int, default=500, help="image queries timed in the loop")
    parser.add_argument("--naive-caption-queries", type=int, default=2500, help="caption queries timed in the loop")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    num_images, num_captions = args.num_images, args.num_images * args.captions_per_image
    image_emb = random_unit_rows(rng, num_images, args.dim)
    caption_emb = random_unit_rows(rng, num_captions, args.dim)
    caption_image_index = np.arange(num_captions) // args.captions_per_image
    protocol = "coco-5k" if num_images == 5000 else "all-images"
    print(f"{num_images} images x {num_captions} captions, {args.dim}-d random unit vectors, protocol {protocol}")
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"numpy {np.__version__} (OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    results, ours_seconds = timed(
        evaluate_protocol, image_emb, caption_emb, caption_image_index, protocol=protocol
    )
    print(f"ours: evaluate_protocol (sims + ranks, all queries): {ours_seconds:.2f} s, rsum {results['rsum']:.3f}")
    sims, sims_seconds = timed(similarity_matrix, torch.from_numpy(image_emb), torch.from_numpy(caption_emb))
    sims = sims.numpy()
    _, metrics_seconds = timed(recall_metrics, sims, caption_image_index)
    print(f"  breakdown (rerun): similarity matrix {sims_seconds:.2f} s; recall_metrics {metrics_seconds:.2f} s")

    image_queries = np.sort(rng.choice(num_images, size=min(args.naive_image_queries, num_images), replace=False))
    caption_queries = np.sort(
        rng.choice(num_captions, size=min(args.naive_caption_queries, num_captions), replace=False)
    )
    captions_of = [np.flatnonzero(caption_image_index == image) for image in range(num_images)]
    i2t_watch, t2i_watch = Stopwatch(), Stopwatch()
    naive_i2t = naive_i2t_ranks(lambda image: image_emb[image] @ caption_emb.T, captions_of, image_queries, i2t_watch)
    naive_t2i = naive_t2i_ranks(
        lambda caption: caption_emb[caption] @ image_emb.T, caption_image_index, caption_queries, t2i_watch
    )
    i2t_scale, t2i_scale = num_images / len(image_queries), num_captions / len(caption_queries)
    naive = {part: i2t_watch.seconds[part] * i2t_scale + t2i_watch.seconds[part] * t2i_scale
             for part in ("dot", "argsort")}
    naive_seconds = naive["dot"] + naive["argsort"]
    print(f"naive loop timed on a SUBSET of {len(image_queries)} image and {len(caption_queries)} caption queries: "
          f"{sum(i2t_watch.seconds.values()):.2f} s + {sum(t2i_watch.seconds.values()):.2f} s")
    print(f"naive loop EXTRAPOLATED linearly to all {num_images} + {num_captions} queries: {naive_seconds:.1f} s "
          f"(per-query dot products {naive['dot']:.1f} s, argsort + np.where {naive['argsort']:.1f} s)")
    print(f"speed-up, whole evaluation (naive extrapolated / ours): {naive_seconds / ours_seconds:.0f}x (goal >= 100x)")
    print(f"speed-up, ranking only (naive argsort + np.where / recall_metrics): "
          f"{naive['argsort'] / metrics_seconds:.0f}x")

    # Check 1: the same similarity values through both rankings must give identical ranks.
    same_i2t = naive_i2t_ranks(lambda image: sims[image], captions_of, image_queries, Stopwatch())
    same_t2i = naive_t2i_ranks(lambda caption: sims[:, caption], caption_image_index, caption_queries, Stopwatch())
    ours_i2t, ours_t2i = ranks_i2t(sims, caption_image_index), ranks_t2i(sims, caption_image_index)
    subset_naive = subset_metrics(same_i2t, same_t2i)
    subset_ours = subset_metrics(ours_i2t[image_queries], ours_t2i[caption_queries])
    print(f"check on identical sims: {np.sum(same_i2t != ours_i2t[image_queries])} i2t and "
          f"{np.sum(same_t2i != ours_t2i[caption_queries])} t2i rank mismatches; subset metrics "
          f"{'identical' if subset_naive == subset_ours else 'DIFFER'}: {subset_ours}")
    # Check 2: the timed loop's own numpy dot products round differently from torch's matmul.
    i2t_gap = np.abs(naive_i2t - ours_i2t[image_queries])
    t2i_gap = np.abs(naive_t2i - ours_t2i[caption_queries])
    print(f"check on the timed loop's own dot products: {np.sum(i2t_gap > 0)} i2t and {np.sum(t2i_gap > 0)} t2i "
          f"ranks differ, by at most {max(i2t_gap.max(), t2i_gap.max())} (float32 rounding of near-equal scores)")


def subset_metrics(i2t: np.ndarray, t2i: np.ndarray) -> dict[str, float]:
    return {**summarise_ranks(i2t, ks=(1, 5, 10), prefix="i2t"), **summarise_ranks(t2i, ks=(1, 5, 10), prefix="t2i")}


if __name__ == "__main__":
    main()
