"""Recall@K, median rank and mean rank for image-caption retrieval: vectorised, chunked, pure."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

DEFAULT_KS = (1, 5, 10)
DEFAULT_CHUNK_SIZE = 1000  # image rows per step: peak extra memory ~ chunk_size x num_captions x 5 bytes

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


def validate_caption_image_index(
    caption_image_index: Matrix | Sequence[int], num_images: int, num_captions: int
) -> np.ndarray:
    """The caption -> image index as int64 numpy [num_captions]; ValueError unless every value lies in
    [0, num_images) and every image has >= 1 caption."""
    if isinstance(caption_image_index, torch.Tensor):
        caption_image_index = caption_image_index.detach().cpu().numpy()
    index = np.asarray(caption_image_index)
    if index.ndim != 1:
        raise ValueError(f"caption_image_index must be 1-D [num_captions], got shape {index.shape}")
    if not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"caption_image_index must have an integer dtype, got {index.dtype}")
    if len(index) != num_captions:
        raise ValueError(
            f"caption_image_index has {len(index)} entries but there are {num_captions} captions"
        )
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= num_images:
        raise ValueError(
            f"caption_image_index values must lie in [0, {num_images}) (there are {num_images} images), "
            f"got min {low} and max {high}"
        )
    index = index.astype(np.int64, copy=False)
    captions_per_image = np.bincount(index, minlength=num_images)
    uncaptioned = np.flatnonzero(captions_per_image == 0)
    if len(uncaptioned):
        raise ValueError(
            f"{len(uncaptioned)} image(s) have no caption, e.g. rows {uncaptioned[:5].tolist()}: "
            "every image needs >= 1 caption (drop those images or add their captions)"
        )
    return index


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _rows_float32(sims: Matrix, start: int, end: int) -> np.ndarray:
    """Rows [start, end) of sims as float32 numpy [end - start, num_captions] (copied off a GPU if needed)."""
    if isinstance(sims, torch.Tensor):
        return sims[start:end].detach().float().cpu().numpy()
    return np.asarray(sims[start:end], dtype=np.float32)


def _positive_scores(sims: Matrix, index: np.ndarray) -> np.ndarray:
    """s[index[c], c] for every caption c, float32 numpy [num_captions]."""
    columns = np.arange(len(index))
    if isinstance(sims, torch.Tensor):
        rows_t, columns_t = torch.from_numpy(index).to(sims.device), torch.from_numpy(columns).to(sims.device)
        return sims.detach()[rows_t, columns_t].float().cpu().numpy()
    return np.asarray(sims[index, columns], dtype=np.float32)


def _zero_based_ranks(
    sims: Matrix, caption_image_index: Matrix | Sequence[int], *, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """0-based (i2t ranks [num_images], t2i ranks [num_captions]) under the pessimistic tie policy.

    With s the sims, P(i) = {c : index[c] = i} the captions of image i and N(i) its negatives:
      t2i: rank0(c) = #{i' != index[c] : s[i', c] >= s[index[c], c]}
      i2t: rank0(i) = min_{p in P(i)} #{c in N(i) : s[i, c] >= s[i, p]} = #{c in N(i) : s[i, c] >= b_i},
           b_i = max_{p in P(i)} s[i, p]  (the count is non-increasing in the threshold, so the min is at
           the best positive; other positives never push it down).
    One pass over row chunks: #{c : s[i, c] >= b_i} counts every caption, and we subtract the positives
    that reach b_i (those tied with it), which avoids building a [chunk, num_captions] positive mask.
    Counting runs in numpy: its bool count_nonzero is ~4x faster than torch's bool sum on CPU.
    """
    num_images, num_captions = _check_sims(sims)
    index = validate_caption_image_index(caption_image_index, num_images, num_captions)
    _check_positive_int(chunk_size, "chunk_size")

    positive = _positive_scores(sims, index)  # [M] s[index[c], c]
    best = np.full(num_images, -np.inf, dtype=np.float32)
    np.maximum.at(best, index, positive)  # [N] b_i (every image has >= 1 caption)
    positives_at_best = np.bincount(index, weights=positive >= best[index], minlength=num_images).astype(np.int64)

    i2t_at_or_above = np.empty(num_images, dtype=np.int64)
    t2i_at_or_above = np.zeros(num_captions, dtype=np.int64)
    for start in range(0, num_images, chunk_size):
        end = min(start + chunk_size, num_images)
        rows = _rows_float32(sims, start, end)  # [end - start, M]
        if np.isnan(rows.max()):  # max propagates NaN, and costs less than isnan().any()
            raise ValueError(f"sims contains NaN in image rows {start}..{end - 1}: fix the model or embeddings")
        i2t_at_or_above[start:end] = np.count_nonzero(rows >= best[start:end, None], axis=1)
        t2i_at_or_above += np.count_nonzero(rows >= positive[None, :], axis=0)

    i2t = i2t_at_or_above - positives_at_best
    t2i = t2i_at_or_above - 1  # the positive image itself was counted once (s >= s)
    return i2t, t2i


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
    """
    ks = _check_ks(ks)
    i2t0, t2i0 = _zero_based_ranks(sims, caption_image_index, chunk_size=chunk_size)
    metrics = summarise_ranks(i2t0 + 1, ks=ks, prefix="i2t")
    metrics.update(summarise_ranks(t2i0 + 1, ks=ks, prefix="t2i"))
    metrics["rsum"] = sum(metrics[f"{direction}_r{k}"] for direction in ("i2t", "t2i") for k in ks)
    return metrics
