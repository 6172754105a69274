"""One rank engine for eval and search: blocked similarities, pessimistic-tie ranks by counting, exact top-k."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

# A dot block of 2048 x 16384 float32 is 128 MiB. Measured on 2 CPU cores (5K x 25K, 1024-d): its matmuls take
# as long as one whole-matrix product, where 1024 x 8192 blocks took 8-10% longer (more packing per FLOP).
DEFAULT_IMAGE_BLOCK = 2048  # image (query) rows per block
DEFAULT_CAPTION_BLOCK = 16384  # caption (gallery) columns per block
MAX_BLOCK = 1 << 24  # counts are float32 sums of 0/1 over one block side: exact below 2^24

Array = torch.Tensor | np.ndarray
SimFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dot_sim(image_emb: torch.Tensor, caption_emb: torch.Tensor) -> torch.Tensor:
    """s = image_emb @ caption_emb.T, [B, D] x [M, D] -> [B, M]; the cosine for L2-normalised embeddings."""
    return image_emb @ caption_emb.T


def swap_sim(sim_fn: SimFn | None) -> SimFn:
    """(caption block, image block) -> sim_fn(image block, caption block).T, for caption queries over images.

    topk and positive_ranks call sim_fn(query block, gallery block); an asymmetric similarity such as the order
    similarity -||max(0, c - i)|| must still see the image first.
    """
    sim_fn = dot_sim if sim_fn is None else sim_fn
    return lambda caption_block, image_block: sim_fn(image_block, caption_block).T


def as_embeddings(emb: Array, name: str) -> torch.Tensor:
    """emb as a 2-D float32 tensor with >= 1 row and no NaN (writable float32 numpy is shared, not copied)."""
    if isinstance(emb, torch.Tensor):
        tensor = emb.detach()
    elif isinstance(emb, np.ndarray):
        shareable = emb.flags.writeable and emb.dtype.isnative
        tensor = torch.from_numpy(emb) if shareable else torch.tensor(np.asarray(emb))
    else:
        raise ValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(emb).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {tensor.dtype}")
    if tensor.ndim != 2 or tensor.shape[0] == 0:
        raise ValueError(f"{name} must be 2-D [count, dim] with count >= 1, got shape {tuple(tensor.shape)}")
    tensor = tensor.float()
    # A row sum is NaN when the row holds a NaN (or both infinities): cheap, and no [count, dim] bool temporary.
    suspects = torch.isnan(tensor.sum(dim=1)).nonzero()[:, 0]
    bad = suspects[torch.isnan(tensor[suspects]).any(dim=1)] if len(suspects) else suspects
    if len(bad):
        raise ValueError(f"{name} contains NaN in {len(bad)} row(s), e.g. rows {bad[:5].tolist()}")
    return tensor


def embedding_pair(left: Array, right: Array, *, names: tuple[str, str], sim_fn: SimFn | None):
    """Both embeddings validated (as_embeddings), on one device, of one dim unless a custom sim_fn is given."""
    left_t, right_t = as_embeddings(left, names[0]), as_embeddings(right, names[1])
    if left_t.device != right_t.device:
        raise ValueError(f"{names[0]} is on {left_t.device} but {names[1]} on {right_t.device}: move both to one")
    if sim_fn is None and left_t.shape[1] != right_t.shape[1]:
        raise ValueError(f"{names[0]} dim {left_t.shape[1]} != {names[1]} dim {right_t.shape[1]}: both must be "
                         "in the joint embedding space")
    return left_t, right_t


def validate_caption_image_index(caption_image_index: Array | Sequence[int], num_images: int,
                                 num_captions: int) -> np.ndarray:
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
        raise ValueError(f"caption_image_index has {len(index)} entries but there are {num_captions} captions")
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= num_images:
        raise ValueError(f"caption_image_index values must lie in [0, {num_images}) (there are {num_images} "
                         f"images), got min {low} and max {high}")
    index = index.astype(np.int64, copy=False)
    uncaptioned = np.flatnonzero(np.bincount(index, minlength=num_images) == 0)
    if len(uncaptioned):
        raise ValueError(f"{len(uncaptioned)} image(s) have no caption, e.g. rows {uncaptioned[:5].tolist()}: "
                         "every image needs >= 1 caption (drop those images or add their captions)")
    return index


def check_block(value: int, name: str) -> int:
    """A block size: a positive integer up to MAX_BLOCK."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value > MAX_BLOCK:
        raise ValueError(f"{name} must be at most {MAX_BLOCK} (counts are exact float32 sums), got {value}")
    return int(value)


class BlockScorer:
    """score(rows [n, D], cols [m, D'], nan_message) -> float32 [n, m] = sim_fn(rows, cols), validated, NaN-checked.

    The default dot product writes into one reused buffer (no allocation per block), so a block is only valid
    until the next call; its rows are ROW_ALIGN-float aligned (a row stride of 8190 floats made MKL's sgemm
    ~30% slower than 8192 on this CPU, measured), and it skips the NaN check when dot_cannot_overflow(left, right)
    proves that no block can hold one. A NaN raises ValueError(nan_message + the fix).
    """

    ROW_ALIGN = 16  # floats: one 64-byte cache line

    def __init__(self, sim_fn: SimFn | None, left: torch.Tensor, right: torch.Tensor, *, max_rows: int,
                 max_cols: int) -> None:
        self.sim_fn = sim_fn
        self.out = torch.empty(max_rows * self._stride(max_cols) if sim_fn is None else 0, device=left.device)
        self.check_nan = sim_fn is not None or not dot_cannot_overflow(left, right)

    def __call__(self, rows: torch.Tensor, cols: torch.Tensor, nan_message: str) -> torch.Tensor:
        n, m = rows.shape[0], cols.shape[0]
        if self.sim_fn is None:
            stride = self._stride(m)
            block = torch.mm(rows, cols.T, out=self.out[: n * stride].view(n, stride)[:, :m])
        else:
            block = torch.as_tensor(self.sim_fn(rows, cols))
            if tuple(block.shape) != (n, m) or not block.is_floating_point():
                raise ValueError(f"sim_fn must return a float [{n}, {m}] matrix for a block of {n} rows (images or "
                                 f"queries) and {m} columns, got {block.dtype} of shape {tuple(block.shape)}")
            block = block.float()
        return check_block_nan(block, nan_message) if self.check_nan else block

    def _stride(self, cols: int) -> int:
        return -(-cols // self.ROW_ALIGN) * self.ROW_ALIGN


def dot_cannot_overflow(left: torch.Tensor, right: torch.Tensor) -> bool:
    """True if every dot product of a row of left [N, D] with a row of right [M, D] is finite (so not NaN):
    both finite and D * max|left| * max|right| below the float32 maximum."""
    bounds = [max(-float(low), float(high)) for low, high in (torch.aminmax(left), torch.aminmax(right))]
    return all(np.isfinite(bounds)) and left.shape[1] * bounds[0] * bounds[1] < 0.5 * float(np.finfo(np.float32).max)


def check_block_nan(block: torch.Tensor, message: str) -> torch.Tensor:
    """block itself; ValueError(message + the fix) if it holds a NaN (row sums first: cheaper than isnan)."""
    if torch.isnan(block.sum(dim=1)).any() and torch.isnan(block).any():
        raise ValueError(f"{message}: fix the model or embeddings")
    return block


class Counter:
    """Counts of block entries at or above per-row and per-column thresholds, minus given (row, col) entries.

    c_row[r] = #{j : block[r, j] >= t_row[r]},  c_col[j] = #{r : block[r, j] >= t_col[j]}, both less the
    excluded entries that passed their test (the same comparison on the same values, so exclusion by index is
    exact). torch.ge into a float32 buffer, then a matrix-vector product with ones (on 2 CPU cores several
    times faster than numpy's bool count_nonzero, ~15x faster than torch's bool sum), by strips of rows that
    stay in cache, on one CPU thread: each op of a strip is small, and with two threads every op ends in a
    barrier that a busy machine turns into a stall (measured under load 4-5 on 2 cores, a 1024 x 5120 block:
    median 13 ms on one thread, 25 ms for whole-block ops on two, 140 ms for strips on two; GEMM 230 ms).
    """

    STRIP_ELEMENTS = 1 << 19  # 2 MiB of float32 per strip: the strip and its comparison fit in L2/L3

    def __init__(self, *, device: torch.device, max_side: int) -> None:
        self.buffer = torch.empty(self.STRIP_ELEMENTS + max_side, device=device)
        self.ones = torch.ones(max_side, device=device)

    def count(self, block: torch.Tensor, row_thresholds: torch.Tensor | None, col_thresholds: torch.Tensor | None,
              excluded: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor | None, ...]:
        """(c_row [n] or None, c_col [m] or None) int64; a None threshold skips that direction."""
        threads = torch.get_num_threads()
        single = block.device.type == "cpu" and threads > 1
        if single:
            torch.set_num_threads(1)
        try:
            rows, cols = self._count(block, row_thresholds, col_thresholds)
        finally:
            if single:
                torch.set_num_threads(threads)
        if excluded is not None:
            (n, m), values = block.shape, block[excluded]
            zeros = torch.zeros(max(n, m), dtype=torch.int64, device=block.device)
            if rows is not None:
                rows -= zeros[:n].index_add(0, excluded[0], (values >= row_thresholds[excluded[0]]).long())
            if cols is not None:
                cols -= zeros[:m].index_add(0, excluded[1], (values >= col_thresholds[excluded[1]]).long())
        return rows, cols

    def _count(self, block, row_thresholds, col_thresholds) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        n, m = block.shape
        rows = None if row_thresholds is None else torch.empty(n, device=block.device)
        cols = None if col_thresholds is None else torch.zeros(m, device=block.device)
        step = max(1, self.STRIP_ELEMENTS // m)
        for r0 in range(0, n, step):
            strip = block[r0:r0 + step]
            above = self.buffer[: strip.shape[0] * m].view(strip.shape[0], m)
            if rows is not None:
                torch.mv(torch.ge(strip, row_thresholds[r0:r0 + step, None], out=above), self.ones[:m],
                         out=rows[r0:r0 + step])
            if cols is not None:
                cols.addmv_(torch.ge(strip, col_thresholds[None, :], out=above).T, self.ones[: strip.shape[0]])
        return None if rows is None else rows.long(), None if cols is None else cols.long()


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
