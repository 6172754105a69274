"""Similarities and the batch convention every loss shares: pure functions of tensors.

Batch convention shared by every loss here (see DESIGN.md):
  sims [B, C], B == C: row b is the image of caption b (image rows repeat when two captions of one
  image share the batch), column c is caption c, so the diagonal sims[b, b] is the sampled positive
  pair of both row b and caption b. pos_mask [B, C] (bool, from `positive_mask`) is True where the row
  and the caption show the same image: the diagonal plus the same-image off-diagonal entries. Those
  off-diagonal entries are never negatives and never extra positives: each query has exactly one
  positive, its diagonal pair, as in the paper's sum over training pairs (i_n, c_n).
  Caption retrieval: query = image row b, positive = caption b, negatives = captions c with
  pos_mask[b, c] False. Image retrieval: query = caption c, positive = image row c, negatives = image
  rows b with pos_mask[b, c] False (so a duplicate row of c's own image is not a negative).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Bound on the [rows, C, D] intermediate of order_sim (elements), so eval-sized matrices stay in memory.
ORDER_SIM_CHUNK_ELEMENTS = 1 << 24

SimilarityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def validate_batch(sims: torch.Tensor, pos_mask: torch.Tensor) -> None:
    """Raise ValueError unless sims is a square float [B, B] matrix and pos_mask a bool mask of the
    same shape whose diagonal (the sampled pairs) is all True."""
    if sims.dim() != 2 or sims.shape[0] != sims.shape[1]:
        raise ValueError(f"sims must be square [B, B] (row b = the image of caption b), got {tuple(sims.shape)}")
    if not sims.is_floating_point():
        raise ValueError(f"sims must be a float tensor, got {sims.dtype}")
    if pos_mask.dtype != torch.bool or pos_mask.shape != sims.shape:
        raise ValueError(f"pos_mask must be bool {tuple(sims.shape)}, got {pos_mask.dtype} "
                         f"{tuple(pos_mask.shape)}; build it with positive_mask(image_ids, caption_image_ids)")
    if not bool(pos_mask.diagonal().all()):
        raise ValueError("pos_mask must be True on the diagonal: row b must be the image of caption b")


def _check_embeddings(image_emb: torch.Tensor, caption_emb: torch.Tensor) -> None:
    if image_emb.dim() != 2 or caption_emb.dim() != 2 or image_emb.shape[1] != caption_emb.shape[1]:
        raise ValueError(f"expected image_emb [B, D] and caption_emb [C, D], got {tuple(image_emb.shape)} "
                         f"and {tuple(caption_emb.shape)}")


def cosine_sim(image_emb: torch.Tensor, caption_emb: torch.Tensor) -> torch.Tensor:
    """s(i, c) = f(i) . g(c): image_emb [B, D], caption_emb [C, D] -> sims [B, C].

    The cosine similarity of the paper because the model L2-normalises both embeddings; with the
    model's no-image-normalisation option it is the plain inner product, as in the reference code.
    """
    _check_embeddings(image_emb, caption_emb)
    return image_emb @ caption_emb.T


def order_sim(image_emb: torch.Tensor, caption_emb: torch.Tensor) -> torch.Tensor:
    """Order-embedding similarity s(i, c) = -|| max(0, g(c) - f(i)) ||_2: [B, D], [C, D] -> [B, C].

    The paper's Order++ section writes the squared norm; the VSE++ reference code (and Vendrov et al.'s
    order-embeddings code it follows) takes the plain Euclidean norm, which is what produced the
    paper's Table 4 numbers (margin 0.05), so the plain norm is used here.
    The gradient at an exactly satisfied order (norm 0) is 0, not NaN. Computed in chunks of image
    rows so the [rows, C, D] intermediate stays under ORDER_SIM_CHUNK_ELEMENTS elements.
    """
    _check_embeddings(image_emb, caption_emb)
    rows_per_chunk = max(1, ORDER_SIM_CHUNK_ELEMENTS // max(1, caption_emb.numel()))
    chunks = []
    for start in range(0, image_emb.shape[0], rows_per_chunk):
        image_chunk = image_emb[start:start + rows_per_chunk]
        violation = (caption_emb.unsqueeze(0) - image_chunk.unsqueeze(1)).clamp(min=0)  # [rows, C, D]
        chunks.append(-torch.linalg.vector_norm(violation, dim=-1))
    if not chunks:
        return image_emb.new_zeros((0, caption_emb.shape[0]))
    return torch.cat(chunks, dim=0)


def positive_mask(image_ids: torch.Tensor, caption_image_ids: torch.Tensor) -> torch.Tensor:
    """pos_mask[b, c] = (image_ids[b] == caption_image_ids[c]): int [B], int [C] -> bool [B, C].

    image_ids are the store image index of each image row, caption_image_ids the image index of each
    caption (in the trainer both are the batch's caption -> image index, so B == C).
    """
    for name, ids in (("image_ids", image_ids), ("caption_image_ids", caption_image_ids)):
        if ids.dim() != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-D integer tensor, got {ids.dtype} {tuple(ids.shape)}")
    return image_ids.unsqueeze(1) == caption_image_ids.unsqueeze(0)


SIMILARITY_FUNCTIONS: dict[str, SimilarityFn] = {"cosine": cosine_sim, "order": order_sim}


def similarity_function(name: str) -> SimilarityFn:
    """The similarity a model was trained with, by its --similarity name: "cosine" or "order"."""
    if name not in SIMILARITY_FUNCTIONS:
        raise ValueError(f"unknown similarity {name!r}; valid: {', '.join(SIMILARITY_FUNCTIONS)}")
    return SIMILARITY_FUNCTIONS[name]
