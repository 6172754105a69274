"""Recall@K, median rank and mean rank for image-caption retrieval: pure, from a matrix or from embeddings."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from eval.blocks import (DEFAULT_CAPTION_BLOCK, DEFAULT_IMAGE_BLOCK, Counter, SimFn, check_block, check_block_nan,
                         validate_caption_image_index)
from eval.rank import retrieval_ranks

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_KS", "ranks_i2t", "ranks_t2i", "recall_metrics",
           "recall_metrics_from_embeddings", "summarise_ranks", "validate_caption_image_index"]

DEFAULT_KS = (1, 5, 10)
DEFAULT_CHUNK_SIZE = DEFAULT_IMAGE_BLOCK  # image rows per block; a matrix block is chunk_size x num_captions

Matrix = torch.Tensor | np.ndarray


def _check_sims(sims: Matrix) -> tuple[int, int]:
    """Validate a similarity matrix; return (num_images, num_captions)."""
    if isinstance(sims, torch.Tensor):
        is_float = sims.is_floating_point()
    elif isinstance(sims, np.ndarray):
        is_float = np.issubdtype(sims.dtype, np.floating)
    else:
        raise ValueError(f"sims must be a torch.Tensor or numpy.ndarray, got {type(sims).__name__}")
    if not is_float:
        raise ValueError(f"sims must have a floating dtype (float16/32/64), got {sims.dtype}")
    if sims.ndim != 2:
        raise ValueError(f"sims must be 2-D [num_images, num_captions], got shape {tuple(sims.shape)}")
    num_images, num_captions = sims.shape
    if num_images == 0 or num_captions == 0:
        raise ValueError(f"sims is empty (shape {tuple(sims.shape)}): need >= 1 image and >= 1 caption")
    return num_images, num_captions


def _zero_based_ranks(sims: Matrix, caption_image_index: Matrix | Sequence[int], *,
                      chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """0-based (i2t [N], t2i [M]) ranks of a precomputed matrix under the pessimistic tie policy.

    With P(i) = {c : index[c] = i}, b_i = max_{p in P(i)} s[i, p] and N(i) the other captions:
      i2t: rank0(i) = #{c in N(i) : s[i, c] >= b_i}
      t2i: rank0(c) = #{i != index[c] : s[i, c] >= s[index[c], c]}
    The matrix is already there, so there is no diagonal pass (eval.rank.rank_counts needs one to score each
    pair once): the positives are read from sims, then row chunks are counted by eval.blocks.Counter (the
    engine's counting: >= the thresholds, positive entries excluded by index, read from the same float32
    values) over whole rows in the captions' own order, so nothing is gathered.
    """
    num_images, num_captions = _check_sims(sims)
    index = validate_caption_image_index(caption_image_index, num_images, num_captions)
    chunk_size = check_block(chunk_size, "chunk_size")
    check_block(num_captions, "the number of captions of a matrix")  # a row count is one float32 sum
    device = sims.device if isinstance(sims, torch.Tensor) else torch.device("cpu")
    columns = np.arange(num_captions)
    if isinstance(sims, torch.Tensor):
        positive = sims.detach()[torch.from_numpy(index).to(device), torch.from_numpy(columns).to(device)].float()
    else:
        positive = torch.from_numpy(np.asarray(sims[index, columns], dtype=np.float32))
    index_t = torch.from_numpy(index).to(device)
    best = torch.full((num_images,), -torch.inf, device=device).scatter_reduce_(0, index_t, positive, reduce="amax")
    order = np.argsort(index, kind="stable")  # captions grouped by image: those of rows a..b-1 are one range
    starts = np.concatenate([[0], np.cumsum(np.bincount(index, minlength=num_images))])
    counter = Counter(device=device, max_side=max(chunk_size, num_captions))
    i2t = torch.empty(num_images, dtype=torch.int64, device=device)
    t2i = torch.zeros(num_captions, dtype=torch.int64, device=device)
    for start in range(0, num_images, chunk_size):
        end = min(start + chunk_size, num_images)
        if isinstance(sims, torch.Tensor):
            block = sims.detach()[start:end].float()
        else:
            rows = np.asarray(sims[start:end], dtype=np.float32)
            block = torch.from_numpy(rows) if rows.flags.writeable else torch.tensor(rows)
        check_block_nan(block, f"sims contains NaN in image rows {start}..{end - 1}")
        own = torch.from_numpy(order[starts[start]:starts[end]]).to(device)  # the positives of these rows
        i2t[start:end], counts = counter.count(block, best[start:end], positive, (index_t[own] - start, own))
        t2i += counts
    return i2t.cpu().numpy(), t2i.cpu().numpy()


def ranks_i2t(
    sims: Matrix, caption_image_index: Matrix | Sequence[int], *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> np.ndarray:
    """1-based caption-retrieval rank of each image query, int64 [num_images].

    rank(i) = 1 + #{negative captions c of i : s[i, c] >= max_{p in P(i)} s[i, p]}, i.e. the best rank of
    any of its captions, where negatives tied with the positive count as ranked above it (pessimistic).
    """
    return _zero_based_ranks(sims, caption_image_index, chunk_size=chunk_size)[0] + 1


def ranks_t2i(
    sims: Matrix, caption_image_index: Matrix | Sequence[int], *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> np.ndarray:
    """1-based image-retrieval rank of each caption query, int64 [num_captions].

    rank(c) = 1 + #{images i != index[c] : s[i, c] >= s[index[c], c]} (ties count against the query).
    """
    return _zero_based_ranks(sims, caption_image_index, chunk_size=chunk_size)[1] + 1


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks must name at least one cutoff, e.g. (1, 5, 10)")
    for k in ks:
        _check_positive_int(k, "every k in ks")
    if len(set(ks)) != len(ks):
        raise ValueError(f"ks must not repeat a cutoff, got {ks}")
    return ks


def summarise_ranks(ranks: np.ndarray, *, ks: Sequence[int], prefix: str) -> dict[str, float]:
    """R@K (percent), medr and meanr of 1-based ranks, keys f"{prefix}_r{k}", f"{prefix}_medr", f"{prefix}_meanr".

    R@K   = 100 * mean(rank <= K)
    medr  = floor(median(rank - 1)) + 1   (reference VSE++ convention; = floor(median(rank)), so it equals
                                           the median rank except that an even count's .5 is floored)
    meanr = mean(rank - 1) + 1            (= mean(rank))
    """
    ks = _check_ks(ks)
    ranks0 = np.asarray(ranks, dtype=np.int64) - 1
    if ranks0.ndim != 1 or len(ranks0) == 0 or ranks0.min() < 0:
        raise ValueError(f"ranks must be a non-empty 1-D array of 1-based ranks, got shape {ranks0.shape}")
    summary = {f"{prefix}_r{k}": 100.0 * float(np.mean(ranks0 < k)) for k in ks}
    summary[f"{prefix}_medr"] = float(np.floor(np.median(ranks0)) + 1)
    summary[f"{prefix}_meanr"] = float(np.mean(ranks0) + 1)
    return summary


def recall_metrics(
    sims: Matrix,
    caption_image_index: Matrix | Sequence[int],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Recall@K, medr and meanr in both directions, and rsum, from a similarity matrix.

    sims [num_images, num_captions] (torch or numpy, any float dtype; compared in float32), higher = more
    similar; caption_image_index [num_captions] int, caption c describes image caption_image_index[c], every
    image has >= 1 caption (any number, in any order).
      i2t (caption retrieval, image query): rank of image i = best 1-based rank of any of its captions.
      t2i (image retrieval, caption query): 1-based rank of the caption's one image.
    Tie policy (pessimistic, deterministic): a negative whose similarity equals the positive's ranks above
    it; another positive caption of the same image never pushes a positive down. See ranks_i2t/ranks_t2i.
    Keys: i2t_r{k} for k in ks, i2t_medr, i2t_meanr, the same for t2i, and rsum = sum of every R@K of both
    directions (R@K in percent, so rsum <= 600 for ks = (1, 5, 10)). medr/meanr: see summarise_ranks.
    Runs over chunk_size image rows at a time (memory ~ chunk_size x num_captions), no sorting.
    recall_metrics_from_embeddings gives the same values without the matrix.
    """
    ks = _check_ks(ks)
    i2t0, t2i0 = _zero_based_ranks(sims, caption_image_index, chunk_size=chunk_size)
    return metrics_from_ranks(i2t0 + 1, t2i0 + 1, ks=ks)


def recall_metrics_from_embeddings(
    image_emb: Matrix,
    caption_emb: Matrix,
    caption_image_index: Matrix | Sequence[int],
    *,
    sim_fn: SimFn | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    image_block: int = DEFAULT_IMAGE_BLOCK,
    caption_block: int = DEFAULT_CAPTION_BLOCK,
) -> dict[str, float]:
    """recall_metrics(sim_fn(image_emb, caption_emb), caption_image_index, ks=ks) without the [N, M] matrix.

    image_emb [N, D], caption_emb [M, D] (any float dtype, scored in float32 on their device); sim_fn(image
    rows, caption rows) -> [n, m] defaults to the dot product. Ranks by eval.rank.retrieval_ranks in blocks of
    image_block x caption_block (lower them for a sim_fn whose temporaries grow with n x m x D).
    """
    ks = _check_ks(ks)
    i2t, t2i = retrieval_ranks(image_emb, caption_emb, caption_image_index, sim_fn=sim_fn,
                               image_block=image_block, caption_block=caption_block)
    return metrics_from_ranks(i2t.cpu().numpy(), t2i.cpu().numpy(), ks=ks)


def metrics_from_ranks(i2t: np.ndarray, t2i: np.ndarray, *, ks: Sequence[int]) -> dict[str, float]:
    """The recall_metrics dict of 1-based i2t ranks [N] and t2i ranks [M]."""
    metrics = summarise_ranks(i2t, ks=ks, prefix="i2t")
    metrics.update(summarise_ranks(t2i, ks=ks, prefix="t2i"))
    metrics["rsum"] = sum(metrics[f"{direction}_r{k}"] for direction in ("i2t", "t2i") for k in ks)
    return metrics


def chance_curve(captions_per_image: np.ndarray, *, ks: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i2t, t2i) R@K in percent of a random ranking for each K, any number of captions per image.

    t2i: K / N. i2t: the mean over images of 1 - C(M - c_i, K) / C(M, K), the chance that none of image i's c_i
    captions misses the top K of M, computed as a product prod_{j<K} (M - c_i - j) / (M - j) (no huge integers).
    """
    counts = np.asarray(captions_per_image, dtype=np.float64)
    num_images, num_captions = len(counts), counts.sum()
    i2t, t2i = [], []
    for k in ks:
        j = np.arange(min(k, num_captions))
        miss = np.prod(np.clip((num_captions - counts[:, None] - j) / (num_captions - j), 0.0, None), axis=1)
        i2t.append(100.0 * float(np.mean(1.0 - miss)))
        t2i.append(100.0 * min(1.0, k / num_images))
    return np.asarray(i2t), np.asarray(t2i)


def chance_metrics(captions_per_image: np.ndarray, *, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """R@K of a random ranking in both directions and their rsum (keys as recall_metrics'), for the images'
    caption counts: the row that puts a model's numbers in perspective on any data."""
    i2t, t2i = chance_curve(np.asarray(captions_per_image), ks=list(ks))
    chance = {f"i2t_r{k}": float(value) for k, value in zip(ks, i2t)}
    chance.update({f"t2i_r{k}": float(value) for k, value in zip(ks, t2i)})
    chance["rsum"] = float(sum(i2t) + sum(t2i))
    return chance
