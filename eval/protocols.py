"""Test protocols (COCO 1K/5K, Flickr30K 1K, all images): fold the embeddings, score, average, print a table."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
import torch

from eval.blocks import SimFn, as_embeddings, dot_sim
from eval.metrics import (DEFAULT_CHUNK_SIZE, DEFAULT_KS, chance_metrics, recall_metrics_from_embeddings,
                          validate_caption_image_index)

logger = logging.getLogger(__name__)

# coco-1k: mean over 5 folds of 1000 consecutive test images; coco-5k: all 5000 COCO test images;
# f30k-1k: the 1000 Flickr30K test images; all-images: every image given, no size check (demo, own data).
PROTOCOLS = ("coco-1k", "coco-5k", "f30k-1k", "all-images")
COCO_TEST_IMAGES = 5000
COCO_FOLD_IMAGES = 1000
F30K_TEST_IMAGES = 1000

Embeddings = torch.Tensor | np.ndarray


def similarity_matrix(
    image_emb: torch.Tensor,
    caption_emb: torch.Tensor,
    *,
    sim_fn: SimFn | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """sims [N, M] float32 = sim_fn(image_emb[chunk], caption_emb) stacked over chunks of chunk_size images.

    sim_fn defaults to dot_sim; pass e.g. an order similarity -||max(0, c - i)|| whose temporaries grow
    with chunk_size x M x D (lower chunk_size for it). It must return [chunk, M] with no NaN.
    """
    sim_fn = dot_sim if sim_fn is None else sim_fn
    num_images, num_captions = image_emb.shape[0], caption_emb.shape[0]
    sims = torch.empty(num_images, num_captions, dtype=torch.float32, device=image_emb.device)
    for start in range(0, num_images, chunk_size):
        end = min(start + chunk_size, num_images)
        chunk = torch.as_tensor(sim_fn(image_emb[start:end], caption_emb))
        if tuple(chunk.shape) != (end - start, num_captions) or not chunk.is_floating_point():
            raise ValueError(
                f"sim_fn must return a float [{end - start}, {num_captions}] matrix for {end - start} images "
                f"and {num_captions} captions, got {chunk.dtype} of shape {tuple(chunk.shape)}"
            )
        sims[start:end] = chunk
    return sims


def fold_bounds(protocol: str, num_images: int) -> list[tuple[int, int]]:
    """[(start, end)) image-row ranges of the protocol's folds; ValueError if the image count is wrong."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    required = {"coco-1k": COCO_TEST_IMAGES, "coco-5k": COCO_TEST_IMAGES, "f30k-1k": F30K_TEST_IMAGES}
    if protocol in required and num_images != required[protocol]:
        raise ValueError(
            f"protocol {protocol} needs exactly {required[protocol]} test images, got {num_images}: "
            "check the store and split, or use protocol all-images for any number of images"
        )
    if protocol == "coco-1k":
        return [(start, start + COCO_FOLD_IMAGES) for start in range(0, COCO_TEST_IMAGES, COCO_FOLD_IMAGES)]
    return [(0, num_images)]


def evaluate_protocol(
    image_emb: Embeddings,
    caption_emb: Embeddings,
    caption_image_index: Embeddings | Sequence[int],
    *,
    protocol: str,
    sim_fn: SimFn | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict:
    """Retrieval metrics of one test protocol, averaged over its folds.

    image_emb [N, D] (one row per test image, in store order), caption_emb [M, D'], caption_image_index [M]
    with values in [0, N), each image with >= 1 caption, captions in any order. Fold f covers the image rows
    [start_f, end_f) and the captions c with start_f <= index[c] < end_f, re-indexed to index[c] - start_f;
    its metrics are recall_metrics(sim_fn(images_f, captions_f), ...). The result holds, for each metric key
    of recall_metrics, the mean over folds (coco-1k: over its 5 folds of 1000 images, as the reference
    VSE++ evaluation; medr is averaged too), plus "protocol", "num_images", "num_captions", "num_folds"
    "folds" (the per-fold metric dicts; a single fold for coco-5k, f30k-1k and all-images) and "chance" (the
    R@K and rsum of a random ranking of the same folds, chance_metrics).
    The [N, M] matrix is never held: recall_metrics_from_embeddings ranks each fold by blocks of chunk_size
    images x eval.blocks.DEFAULT_CAPTION_BLOCK captions (a sim_fn with [n, m, D] temporaries must bound them).
    """
    image_t = as_embeddings(image_emb, "image_emb")
    caption_t = as_embeddings(caption_emb, "caption_emb")
    num_images, num_captions = image_t.shape[0], caption_t.shape[0]
    folds = fold_bounds(protocol, num_images)
    if sim_fn is None and image_t.shape[1] != caption_t.shape[1]:
        raise ValueError(
            f"image_emb dim {image_t.shape[1]} != caption_emb dim {caption_t.shape[1]}: both must be in the "
            "joint embedding space"
        )
    index = validate_caption_image_index(caption_image_index, num_images, num_captions)

    fold_metrics = []
    for start, end in folds:
        in_fold = (index >= start) & (index < end)  # captions of this fold's images, wherever they are
        fold_captions = caption_t if in_fold.all() else caption_t[torch.from_numpy(in_fold).to(caption_t.device)]
        fold_metrics.append(recall_metrics_from_embeddings(image_t[start:end], fold_captions, index[in_fold] - start,
                                                           sim_fn=sim_fn, ks=ks, image_block=chunk_size))
        logger.info("%s fold images %d..%d: rsum %.2f", protocol, start, end - 1, fold_metrics[-1]["rsum"])

    results: dict = {key: float(np.mean([fold[key] for fold in fold_metrics])) for key in fold_metrics[0]}
    fold_chance = [chance_metrics(np.bincount(index[(index >= start) & (index < end)] - start,
                                              minlength=end - start), ks=ks) for start, end in folds]
    results["chance"] = {key: float(np.mean([fold[key] for fold in fold_chance])) for key in fold_chance[0]}
    results.update(
        protocol=protocol,
        num_images=num_images,
        num_captions=num_captions,
        num_folds=len(folds),
        folds=fold_metrics,
    )
    return results


def format_table(results: dict) -> str:
    """A fixed-width text table of recall_metrics / evaluate_protocol results, for the screen.

    Rows i2t (caption retrieval) and t2i (image retrieval); columns R@K for every K present, medr, meanr;
    then an rsum line. A header line names the protocol when the results carry one.
    """
    ks = sorted(int(match.group(1)) for key in results if (match := re.fullmatch(r"i2t_r(\d+)", key)))
    columns = [f"r{k}" for k in ks] + ["medr", "meanr"]
    needed = [f"{direction}_{column}" for direction in ("i2t", "t2i") for column in columns] + ["rsum"]
    missing = [key for key in needed if key not in results]
    if not ks or missing:
        raise ValueError(f"results lack metric keys {missing or ['i2t_r<k>']}: pass a recall_metrics dict")

    lines = []
    if "protocol" in results:
        folds = results.get("num_folds", 1)
        averaged = f", mean over {folds} folds" if folds > 1 else ""
        lines.append(
            f"{results['protocol']}: {results.get('num_images', '?')} images, "
            f"{results.get('num_captions', '?')} captions{averaged}"
        )
    headers = [f"R@{k}" for k in ks] + ["medr", "meanr"]
    lines.append(f"{'':<26}" + "".join(f"{header:>8}" for header in headers))
    names = {"i2t": "i2t (caption retrieval)", "t2i": "t2i (image retrieval)"}
    for direction, name in names.items():
        values = "".join(f"{results[f'{direction}_{column}']:>8.2f}" for column in columns)
        lines.append(f"{name:<26}{values}")
    chance = results.get("chance")
    if chance:  # what a random ranking scores on these images and captions
        for direction in ("i2t", "t2i"):
            values = "".join(f"{chance[f'{direction}_r{k}']:>8.2f}" for k in ks)
            lines.append(f"{f'{direction} by chance':<26}{values}")
    rsum = f"{'rsum':<26}{results['rsum']:>8.2f}"
    lines.append(rsum + (f"  (chance {chance['rsum']:.2f})" if chance else ""))
    return "\n".join(lines)
