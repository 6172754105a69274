"""The blocks the rank engine and search share: embeddings checked, similarities scored one block at a time,
pessimistic counts of the scores at or above a threshold."""

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
