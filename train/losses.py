"""Similarity matrices and batch losses (SH, MH, Order++, LSEH, InfoNCE): pure functions of tensors.

The group-of-hard-negatives loss of Zhang et al. and its adaptive k live in train/group_loss.py.

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

import torch
import torch.nn.functional as F

from train.config import LSEH_ALPHA, LSEH_LAMBDA, MARGIN

REDUCTIONS = ("sum", "mean")
# Bound on the [rows, C, D] intermediate of order_sim (elements), so eval-sized matrices stay in memory.
ORDER_SIM_CHUNK_ELEMENTS = 1 << 24


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
    paper's Table 4 numbers (margin 0.05). We use the plain norm, as the issue and DESIGN.md state.
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


def _margin_matrix(margin: float | torch.Tensor, sims: torch.Tensor) -> float | torch.Tensor:
    if isinstance(margin, torch.Tensor):
        if margin.shape != sims.shape:
            raise ValueError(f"a per-pair margin must have the shape of sims {tuple(sims.shape)}, "
                             f"got {tuple(margin.shape)}")
        return margin.to(sims.dtype)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return float(margin)


def contrastive_loss(sims: torch.Tensor, pos_mask: torch.Tensor, *, margin: float | torch.Tensor = MARGIN,
                     max_violation: bool = True, reduction: str = "sum") -> torch.Tensor:
    """Hinge triplet loss of VSE++ in both directions: SH (paper eq. 5) or MH (eq. 6). -> scalar.

    With p_b = sims[b, b] the positive of row b and of caption b, and m[b, c] the margin:
      caption retrieval, query row b:  h_cap[b, c] = [m[b, c] + sims[b, c] - p_b]_+
      image retrieval, query caption c: h_img[b, c] = [m[b, c] + sims[b, c] - p_c]_+
    both over negatives only (pos_mask[b, c] False; positives contribute 0).
      SH (max_violation=False): sum_b sum_c h_cap[b, c] + sum_c sum_b h_img[b, c]
      MH (max_violation=True):  sum_b max_c h_cap[b, c] + sum_c max_b h_img[b, c]  (hardest negative)
    A query with no negative in the batch contributes 0. reduction "sum" is the paper's; "mean" divides
    by B (the number of sampled pairs), i.e. the per-pair mean of each direction, summed over both.

    margin: a float (the paper's alpha = 0.2; Order++ uses 0.05) or a per-pair matrix [B, C], used at
    entry (b, c) by both directions (LSEH: `lseh_margins`).
    """
    validate_batch(sims, pos_mask)
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    margin = _margin_matrix(margin, sims)
    positive = sims.diagonal()  # [B]
    cost_caption = (margin + sims - positive.unsqueeze(1)).clamp(min=0).masked_fill(pos_mask, 0)
    cost_image = (margin + sims - positive.unsqueeze(0)).clamp(min=0).masked_fill(pos_mask, 0)
    if max_violation:  # hinges are >= 0, so the masked 0s never exceed a real negative's hinge
        total = cost_caption.max(dim=1).values.sum() + cost_image.max(dim=0).values.sum()
    else:
        total = cost_caption.sum() + cost_image.sum()
    return total if reduction == "sum" else total / sims.shape[0]


def lseh_margins(semantic_sim: torch.Tensor, pos_mask: torch.Tensor, *, alpha: float = LSEH_ALPHA,
                 lam: float = LSEH_LAMBDA) -> torch.Tensor:
    """Per-pair margins of LSEH (Gong & Cosma): semantic_sim [B, B] -> margins [B, C] (C == B).

    semantic_sim[i, j] = v_i . v_j, the raw dot products of the semantic vectors (TF-IDF + SVD) of the
    batch's captions i and j (caption b is the caption of image row b).
      S[i, j] = semantic_sim[i, j] / max_j' semantic_sim[i, j']   (row-normalised; a row whose max is
                                                                  <= 0, i.e. v_i = 0, is divided by 1)
      m[i, j] = alpha + lam * S[i, j] for negatives, 0 where pos_mask (same image, incl. the diagonal).
    Used as contrastive_loss(sims, pos_mask, margin=m, max_violation=True) (or `lseh_loss`): m[b, c]
    serves both directions at entry (b, c). For caption retrieval (image row b, negative caption c)
    that is S[b, c], the similarity of b's own caption to the negative caption. For image retrieval
    (caption c, negative image row b) it is again S[b, c], normalised by row b's maximum, not the
    transposed S[c, b]: this follows the authors' code (github.com/yangong23/VSEnetworksLSEH,
    VSEinfty_LSEH/lib/loss.py: one margin matrix added to both cost terms). alpha = 0.185 and
    lam = 0.025 are the authors' code's values. The paper's full text was not available to us, so
    the row-normalisation and direction are as the issue and the authors' code, not checked against
    the paper. Unlike that code, same-image off-diagonal pairs are not negatives at all (pos_mask),
    rather than negatives with margin 0.
    """
    if semantic_sim.dim() != 2 or semantic_sim.shape != pos_mask.shape:
        raise ValueError(f"semantic_sim must be [B, B] like pos_mask {tuple(pos_mask.shape)}, "
                         f"got {tuple(semantic_sim.shape)}")
    if alpha < 0 or lam < 0:
        raise ValueError(f"LSEH alpha and lambda must be >= 0, got alpha={alpha}, lam={lam}")
    row_max = semantic_sim.max(dim=1, keepdim=True).values
    row_max = torch.where(row_max > 0, row_max, torch.ones_like(row_max))
    normalized = semantic_sim / row_max  # S [B, B]
    return (alpha + lam * normalized).masked_fill(pos_mask, 0.0)


def lseh_loss(sims: torch.Tensor, pos_mask: torch.Tensor, semantic_vectors: torch.Tensor, *,
              alpha: float = LSEH_ALPHA, lam: float = LSEH_LAMBDA, max_violation: bool = True,
              reduction: str = "sum") -> torch.Tensor:
    """LSEH = contrastive_loss with lseh_margins(v v^T): semantic_vectors [B, V] of the batch's captions.

    MH (max_violation=True) is the method; SH with these margins serves the SH -> MH warm-up.
    """
    if semantic_vectors.dim() != 2 or semantic_vectors.shape[0] != sims.shape[0]:
        raise ValueError(f"semantic_vectors must be [B, V] with B = {sims.shape[0]} (one per caption), "
                         f"got {tuple(semantic_vectors.shape)}")
    semantic_vectors = semantic_vectors.to(sims.dtype)
    margins = lseh_margins(semantic_vectors @ semantic_vectors.T, pos_mask, alpha=alpha, lam=lam)
    return contrastive_loss(sims, pos_mask, margin=margins, max_violation=max_violation, reduction=reduction)


def info_nce_loss(sims: torch.Tensor, pos_mask: torch.Tensor, *, logit_scale: float | torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP-style) over the batch -> scalar.

    logit_scale is the multiplier exp(t) > 0 (CLIP's exp'd, clamped scale: `VSEModel.infonce_scale()`),
    not the log. With L = logit_scale * sims, and same-image entries other than the diagonal set to
    -inf (a duplicate of the positive is neither a target nor a negative):
      loss = ( mean_b CE(L[b, :], target b) + mean_c CE(L[:, c], target c) ) / 2
    i.e. caption retrieval over each row and image retrieval over each column.
    """
    validate_batch(sims, pos_mask)
    if isinstance(logit_scale, torch.Tensor) and logit_scale.dim() != 0:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
    if not isinstance(logit_scale, torch.Tensor) and logit_scale <= 0:
        raise ValueError(f"logit_scale must be > 0 (the exp'd scale), got {logit_scale}")
    eye = torch.eye(sims.shape[0], dtype=torch.bool, device=sims.device)
    logits = (sims * logit_scale).masked_fill(pos_mask & ~eye, float("-inf"))
    targets = torch.arange(sims.shape[0], device=sims.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
