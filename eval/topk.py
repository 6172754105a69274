"""Exact top-k search over a gallery by chunks: memory bounded by one block, never the whole gallery."""

from __future__ import annotations

import numpy as np
import torch

from eval.blocks import (DEFAULT_CAPTION_BLOCK, DEFAULT_IMAGE_BLOCK, Array, BlockScorer, SimFn, check_block,
                         embedding_pair)


def topk(query_emb: Array, gallery_emb: Array, k: int, *, sim_fn: SimFn | None = None,
         query_block: int = DEFAULT_IMAGE_BLOCK,
         gallery_block: int = DEFAULT_CAPTION_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k gallery rows of every query: (scores [Q, k] float32, indices [Q, k] int64), best first.

    s = sim_fn(query rows, gallery rows) (default dot_sim; caption queries over images with an asymmetric
    similarity: swap_sim(sim_fn)). Order: score descending, equal scores by lower gallery index first, so the
    list is a deterministic function of the scores. For a positive g listed at 1-based position p, the
    pessimistic rank of positive_ranks (and eval) is p + #{g' > g : s[q, g'] = s[q, g]}: equal when its score is
    untied. Per gallery chunk, the chunk's top k (torch.topk; a row whose k-th and (k+1)-th scores tie is
    stably sorted instead) is merged into the running top k, so memory is one query_block x gallery_block
    block plus [query_block, 2k] candidates, whatever the gallery size.
    """
    query_t, gallery_t = embedding_pair(query_emb, gallery_emb, names=("query_emb", "gallery_emb"), sim_fn=sim_fn)
    (num_queries, _), num_gallery, device = query_t.shape, gallery_t.shape[0], query_t.device
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_gallery:
        raise ValueError(f"k must be an integer in [1, {num_gallery}] (the gallery size), got {k!r}")
    query_block, gallery_block = check_block(query_block, "query_block"), check_block(gallery_block, "gallery_block")
    scorer = BlockScorer(sim_fn, query_t, gallery_t, max_rows=query_block, max_cols=gallery_block)
    scores = torch.empty(num_queries, k, device=device)
    indices = torch.empty(num_queries, k, dtype=torch.int64, device=device)
    for q0 in range(0, num_queries, query_block):
        q1 = min(q0 + query_block, num_queries)
        best = (torch.empty(q1 - q0, 0, device=device), torch.empty(q1 - q0, 0, dtype=torch.int64, device=device))
        for g0 in range(0, num_gallery, gallery_block):
            block = scorer(query_t[q0:q1], gallery_t[g0:g0 + gallery_block],
                           f"sim_fn output contains NaN in query rows {q0}..{q1 - 1}")
            chunk_scores, chunk_indices = chunk_topk(block, k)
            best = merge_topk(*best, chunk_scores, chunk_indices + g0, k)
        scores[q0:q1], indices[q0:q1] = best
    return scores, indices


def chunk_topk(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact top-min(k, m) set of each row of block [n, m] under (score desc, column asc), in any order."""
    n, m = block.shape
    if k >= m:
        return block.clone(), torch.arange(m, device=block.device).expand(n, m)
    values, cols = torch.topk(block, k + 1, dim=1)  # sorted descending; which of tied entries is arbitrary
    tied = (values[:, k - 1] == values[:, k]).nonzero()[:, 0]  # rows whose k-th place is shared
    values, cols = values[:, :k], cols[:, :k]
    if len(tied):
        tied_values, tied_cols = torch.sort(block[tied], dim=1, descending=True, stable=True)
        values[tied], cols[tied] = tied_values[:, :k], tied_cols[:, :k]
    return values, cols


def merge_topk(best_scores, best_indices, new_scores, new_indices, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k of the union of two candidate lists [n, *] in (score desc, gallery index asc) order."""
    indices, order = torch.cat([best_indices, new_indices], dim=1).sort(dim=1)  # lower index first ...
    scores, order = torch.cat([best_scores, new_scores], dim=1).gather(1, order).sort(dim=1, descending=True,
                                                                                    stable=True)  # ... by score
    return scores[:, :k], indices.gather(1, order[:, :k])
