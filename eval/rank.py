"""One rank engine for eval and search: pessimistic-tie ranks by counting over blocks, never sorting whole rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from eval.blocks import (DEFAULT_CAPTION_BLOCK, DEFAULT_IMAGE_BLOCK, Array, BlockScorer, Counter, SimFn, check_block,
                         embedding_pair, validate_caption_image_index)


def image_groups(captions_per_image: np.ndarray, *, image_block: int, caption_block: int) -> list[tuple]:
    """Consecutive image ranges [a, b) with <= image_block images and <= caption_block captions each (one image
    with more captions than caption_block forms a group alone)."""
    starts = np.concatenate([[0], np.cumsum(captions_per_image)])  # [N + 1] first sorted caption of each image
    groups, start, num_images = [], 0, len(captions_per_image)
    while start < num_images:
        by_captions = int(np.searchsorted(starts, starts[start] + caption_block, side="right")) - 1
        end = max(start + 1, min(start + image_block, num_images, by_captions))
        groups.append((start, end))
        start = end
    return groups


def caption_grid(groups: list[tuple], starts: np.ndarray, caption_block: int) -> list[tuple]:
    """Sorted-caption ranges [c0, c1) of <= caption_block captions covering all captions, cut at group
    boundaries where possible (so that most blocks hold no positive of the image group they meet)."""
    grid, open_start = [], None
    for a, b in groups:
        lo, hi = int(starts[a]), int(starts[b])
        if open_start is not None and hi - open_start > caption_block:
            grid.append((open_start, lo))
            open_start = None
        if hi - lo > caption_block:  # one image with many captions: cut its range into blocks
            grid.extend((c, min(c + caption_block, hi)) for c in range(lo, hi, caption_block))
        elif open_start is None:
            open_start = lo
    if open_start is not None:
        grid.append((open_start, int(starts[groups[-1][1]])))
    return grid


def rank_counts(score: Callable, columns: Callable, sorted_index: torch.Tensor, captions_per_image: np.ndarray, *,
                image_block: int, caption_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based (i2t [N], t2i [M] in sorted-caption order) ranks by blocks, each similarity computed once.

    Captions are taken sorted by image (sorted_index non-decreasing), so image i's captions P(i) are one range.
    With s the similarities, b_i = max_{p in P(i)} s[i, p] and N(i) the other captions:
      i2t: rank0(i) = #{c in N(i) : s[i, c] >= b_i}     (best positive; other positives never count)
      t2i: rank0(c) = #{i != index[c] : s[i, c] >= s[index[c], c]}
    Pass 1 scores each image group against its own captions (the "diagonal" block holding every positive of
    both directions), reads b and the positive scores from those very values and counts there, excluding the
    positive entries by index. Pass 2 scores every other (group, caption range) block, which holds no positive,
    and counts against the thresholds of pass 1. score(a, b, operand) -> float32 [b - a, m] scores images
    [a, b) against the captions of columns(c0, c1) (an operand sliceable along dim 0).
    """
    device = sorted_index.device
    groups = image_groups(captions_per_image, image_block=image_block, caption_block=caption_block)
    starts = np.concatenate([[0], np.cumsum(captions_per_image)])
    num_images, num_captions = len(captions_per_image), int(starts[-1])
    counter = Counter(device=device, max_side=max(image_block, caption_block))
    best = torch.full((num_images,), -torch.inf, device=device)  # [N] b_i
    positive = torch.empty(num_captions, device=device)  # [M] s[index[c], c], sorted order
    i2t = torch.zeros(num_images, dtype=torch.int64, device=device)
    t2i = torch.zeros(num_captions, dtype=torch.int64, device=device)

    for a, b in groups:  # pass 1: diagonal blocks
        lo, hi = int(starts[a]), int(starts[b])
        if hi - lo > caption_block:  # one image (see image_groups): every caption is a positive, nothing to count
            for c0 in range(lo, hi, caption_block):
                c1 = min(c0 + caption_block, hi)
                positive[c0:c1] = score(a, b, columns(c0, c1))[0]
            best[a] = positive[lo:hi].max()
            continue
        block = score(a, b, columns(lo, hi))  # [b - a, hi - lo]
        own = (sorted_index[lo:hi] - a, torch.arange(hi - lo, device=device))  # positive entries (row, col)
        positive[lo:hi] = block[own]
        best[a:b].scatter_reduce_(0, own[0], positive[lo:hi], reduce="amax")
        i2t[a:b], t2i[lo:hi] = counter.count(block, best[a:b], positive[lo:hi], own)

    for c0, c1 in caption_grid(groups, starts, caption_block):  # pass 2: blocks without positives
        operand = columns(c0, c1)  # caption range outermost: gathered once, scored against every group
        for a, b in groups:
            lo, hi = int(starts[a]), int(starts[b])
            for p0, p1 in ((c0, min(c1, lo)), (max(c0, hi), c1)):  # the range minus this group's captions
                if p0 < p1:
                    rows, cols = counter.count(score(a, b, operand[p0 - c0:p1 - c0]), best[a:b], positive[p0:p1])
                    i2t[a:b] += rows
                    t2i[p0:p1] += cols
    return i2t, t2i


def sort_by_image(caption_image_index: np.ndarray, num_images: int) -> tuple[np.ndarray | None, np.ndarray]:
    """(stable caption order sorting the index, or None if it is sorted already; captions per image [N])."""
    order = None if np.all(caption_image_index[1:] >= caption_image_index[:-1]) else np.argsort(
        caption_image_index, kind="stable")
    return order, np.bincount(caption_image_index, minlength=num_images)


def unsort(t2i_sorted: torch.Tensor, order: np.ndarray | None) -> torch.Tensor:
    if order is None:
        return t2i_sorted
    t2i = torch.empty_like(t2i_sorted)
    t2i[torch.from_numpy(order).to(t2i.device)] = t2i_sorted
    return t2i


def retrieval_ranks(image_emb: Array, caption_emb: Array, caption_image_index: Array | Sequence[int], *,
                    sim_fn: SimFn | None = None, image_block: int = DEFAULT_IMAGE_BLOCK,
                    caption_block: int = DEFAULT_CAPTION_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based (i2t ranks [N], t2i ranks [M]) int64 from embeddings, never holding the [N, M] matrix.

    image_emb [N, D], caption_emb [M, D] (any float dtype, scored in float32 on their device), caption c
    describes image caption_image_index[c] (every image >= 1 caption, any order); s = sim_fn(image rows,
    caption rows) [n, m] (default dot_sim). Pessimistic ties, other positives never push a positive down:
      i2t rank(i) = 1 + #{negative captions c of i : s[i, c] >= max_{p in P(i)} s[i, p]}
      t2i rank(c) = 1 + #{images i != index[c] : s[i, c] >= s[index[c], c]}
    Blocks of <= image_block images x caption_block captions (see rank_counts), each pair scored once: extra
    memory is one float32 block (128 MiB by default), a 2 MiB counting strip, one gathered caption block when
    the captions are not sorted by image, and O(N + M) counts, whatever N x M. A sim_fn with [n, m, D]
    temporaries (the order similarity) must bound them itself or be given smaller blocks.
    """
    image_t, caption_t = embedding_pair(image_emb, caption_emb, names=("image_emb", "caption_emb"), sim_fn=sim_fn)
    index = validate_caption_image_index(caption_image_index, image_t.shape[0], caption_t.shape[0])
    image_block, caption_block = check_block(image_block, "image_block"), check_block(caption_block, "caption_block")
    order, captions_per_image = sort_by_image(index, image_t.shape[0])
    order_t = None if order is None else torch.from_numpy(order).to(caption_t.device)
    scorer = BlockScorer(sim_fn, image_t, caption_t, max_rows=image_block, max_cols=caption_block)

    def columns(c0: int, c1: int) -> torch.Tensor:  # caption rows [c1 - c0, D] of sorted positions c0..c1-1
        return caption_t[c0:c1] if order_t is None else caption_t.index_select(0, order_t[c0:c1])

    def score(a: int, b: int, captions: torch.Tensor) -> torch.Tensor:
        return scorer(image_t[a:b], captions, f"sim_fn output contains NaN in image rows {a}..{b - 1}")

    sorted_index = torch.from_numpy(index if order is None else index[order]).to(image_t.device)
    i2t, t2i = rank_counts(score, columns, sorted_index, captions_per_image, image_block=image_block,
                           caption_block=caption_block)
    return i2t + 1, unsort(t2i, order) + 1


def positive_ranks(query_emb: Array, gallery_emb: Array, query_rows: Array | Sequence[int],
                   positive_rows: Array | Sequence[int], *, sim_fn: SimFn | None = None,
                   query_block: int = DEFAULT_IMAGE_BLOCK, gallery_block: int = DEFAULT_CAPTION_BLOCK) -> torch.Tensor:
    """1-based rank over the whole gallery of each known (query, positive) pair, int64 [P], eval's tie policy.

    Pair p = (q, g) = (query_rows[p], positive_rows[p]); Pos(q) = every gallery row paired with q.
      rank(p) = 1 + #{g' not in Pos(q) : s[q, g'] >= s[q, g]}
    A tie counts against the positive and other positives never push it down, so eval's t2i rank of caption c
    is positive_ranks(caption_emb, image_emb, [c], [index[c]], sim_fn=swap_sim(sim_fn)) and its i2t rank of
    image i the min over P(i) of positive_ranks(image_emb, caption_emb, [i] * |P(i)|, P(i)). s[q, g] is read from
    the very block values that are counted (a chunk holding positives is scored twice: once to read them,
    once to count), so rounding can never count a positive against itself. Memory: blocks of <= query_block
    pairs x gallery_block gallery rows.
    """
    query_t, gallery_t = embedding_pair(query_emb, gallery_emb, names=("query_emb", "gallery_emb"), sim_fn=sim_fn)
    queries_of, positives_of = pair_rows(query_rows, positive_rows, query_t.shape[0], gallery_t.shape[0])
    query_block, gallery_block = check_block(query_block, "query_block"), check_block(gallery_block, "gallery_block")
    device, num_gallery = query_t.device, gallery_t.shape[0]
    scorer = BlockScorer(sim_fn, query_t, gallery_t, max_rows=query_block, max_cols=gallery_block)
    counter = Counter(device=device, max_side=max(query_block, gallery_block))
    order = np.lexsort((positives_of, queries_of))  # pairs by query, then gallery row
    queries, pairs_per_query = np.unique(queries_of[order], return_counts=True)
    first_pair = np.concatenate([[0], np.cumsum(pairs_per_query)])
    ranks = torch.empty(len(order), dtype=torch.int64, device=device)
    for u0, u1 in image_groups(pairs_per_query, image_block=query_block, caption_block=query_block):
        p0, p1 = first_pair[u0], first_pair[u1]
        sizes = pairs_per_query[u0:u1]
        rows = query_t.index_select(0, torch.from_numpy(queries[u0:u1]).to(device))  # [n, D]
        pair_row = torch.from_numpy(np.repeat(np.arange(u1 - u0), sizes)).to(device)  # [Pb] local query of each
        positive = positives_of[order[p0:p1]]  # [Pb] gallery row of each pair
        excl_pair, excl_row = sibling_entries(sizes, positive)

        def block_at(g0: int) -> torch.Tensor:
            return scorer(rows, gallery_t[g0:g0 + gallery_block],
                          f"sim_fn output contains NaN in query rows {queries[u0]}..{queries[u1 - 1]}")

        threshold = torch.empty(p1 - p0, device=device)  # [Pb] s[q, g] of each pair
        for g0 in np.unique(positive // gallery_block) * gallery_block:  # pass 1: the chunks holding positives
            here = torch.from_numpy(np.flatnonzero((positive >= g0) & (positive < g0 + gallery_block))).to(device)
            threshold[here] = block_at(g0)[pair_row[here], torch.from_numpy(positive - g0).to(device)[here]]
        counts = torch.zeros(p1 - p0, dtype=torch.int64, device=device)
        one_each = p1 - p0 == len(rows)  # one pair per query: pair j is block row j
        for g0 in range(0, num_gallery, gallery_block):  # pass 2: count
            block = block_at(g0)
            for s0 in range(0, p1 - p0, query_block):  # one query may have more pairs than query_block
                s1 = min(s0 + query_block, p1 - p0)
                pair_scores = block if one_each else block.index_select(0, pair_row[s0:s1])
                mine = np.flatnonzero((excl_pair >= s0) & (excl_pair < s1) & (excl_row >= g0)
                                      & (excl_row < g0 + gallery_block))
                excluded = (torch.from_numpy(excl_pair[mine] - s0).to(device),
                            torch.from_numpy(excl_row[mine] - g0).to(device))
                counts[s0:s1] += counter.count(pair_scores, threshold[s0:s1], None, excluded)[0]
        ranks[torch.from_numpy(order[p0:p1]).to(device)] = counts + 1
    return ranks


def sibling_entries(sizes: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pair [E], gallery row [E]): every pair j with every positive of its own query, E = sum(sizes^2), for
    pairs grouped by query (sizes[u] consecutive pairs each, positive [P] their gallery rows): the entries that
    pair j's count excludes (itself and its query's other positives)."""
    group_start = np.repeat(np.cumsum(sizes) - sizes, sizes)  # [P] first pair of each pair's query
    group_size = np.repeat(sizes, sizes)  # [P]
    pair = np.repeat(np.arange(len(positive)), group_size)  # [E]
    within = np.arange(len(pair)) - np.repeat(np.cumsum(group_size) - group_size, group_size)  # 0..size-1
    return pair, positive[np.repeat(group_start, group_size) + within]


def pair_rows(query_rows, positive_rows, num_queries: int, num_gallery: int) -> tuple[np.ndarray, np.ndarray]:
    """(query_rows, positive_rows) as int64 numpy [P], P >= 1, of one length, within the row counts."""
    pairs = []
    for values, name, limit in ((query_rows, "query_rows", num_queries), (positive_rows, "positive_rows",
                                                                          num_gallery)):
        rows = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
        if rows.ndim != 1 or len(rows) == 0 or not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"{name} must be a non-empty 1-D integer array, got {rows.dtype} {rows.shape}")
        if rows.min() < 0 or rows.max() >= limit:
            raise ValueError(f"{name} values must lie in [0, {limit}), got min {rows.min()} and max {rows.max()}")
        pairs.append(rows.astype(np.int64))
    if len(pairs[0]) != len(pairs[1]):
        raise ValueError(f"query_rows has {len(pairs[0])} entries but positive_rows {len(pairs[1])}: one per pair")
    return pairs[0], pairs[1]
