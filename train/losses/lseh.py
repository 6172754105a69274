"""LSEH margins (Gong & Cosma, 2023): the hinge margin of a pair grows with the semantic similarity of the captions.

The semantic vectors (TF-IDF + SVD of the training captions) are fitted in train/losses/semantic.py;
HingeLoss (train/losses/hinge.py) turns them into margins per batch.
"""

from __future__ import annotations

import torch

LSEH_ALPHA = 0.185  # base margin of the authors' code (VSE++ uses 0.2)
LSEH_LAMBDA = 0.025  # weight of the semantic term of the authors' code


def lseh_margins(semantic_sim: torch.Tensor, pos_mask: torch.Tensor, *, alpha: float = LSEH_ALPHA,
                 lam: float = LSEH_LAMBDA) -> torch.Tensor:
    """Per-pair margins of LSEH (Gong & Cosma): semantic_sim [B, B] -> margins [B, C] (C == B).

    semantic_sim[i, j] = v_i . v_j, the raw dot products of the semantic vectors (TF-IDF + SVD) of the
    batch's captions i and j (caption b is the caption of image row b).
      S[i, j] = semantic_sim[i, j] / max_j' semantic_sim[i, j']   (row-normalised; a row whose max is
                                                                  <= 0, i.e. v_i = 0, is divided by 1)
      m[i, j] = alpha + lam * S[i, j] for negatives, 0 where pos_mask (same image, incl. the diagonal).
    Used as contrastive_loss(sims, pos_mask, margin=m, max_violation=True) (train/losses/hinge.py).
    m[b, c] serves both directions at entry (b, c): for caption retrieval (image row b, negative caption
    c) it is S[b, c], the similarity of b's own caption to the negative caption; for image retrieval
    (caption c, negative row b) it is again S[b, c], not the transposed S[c, b], as in the authors' code
    (github.com/yangong23/VSEnetworksLSEH, VSEinfty_LSEH/lib/loss.py: one margin matrix added to both
    cost terms), whose alpha = 0.185 and lam = 0.025 these defaults are. Only the paper's abstract was
    available, so the normalisation follows that code. Unlike it, same-image off-diagonal pairs are not
    negatives at all (pos_mask) rather than negatives with margin 0.
    """
    if semantic_sim.dim() != 2 or semantic_sim.shape != pos_mask.shape:
        raise ValueError(f"semantic_sim must be [B, B] like pos_mask {tuple(pos_mask.shape)}, "
                         f"got {tuple(semantic_sim.shape)}")
    if alpha < 0 or lam < 0:
        raise ValueError(f"LSEH alpha and lambda must be >= 0, got alpha={alpha}, lam={lam}")
    row_max = lseh_row_normaliser(semantic_sim).unsqueeze(1)
    return lseh_margin_values(semantic_sim, row_max, alpha=alpha, lam=lam).masked_fill(pos_mask, 0.0)


def lseh_row_normaliser(semantic_sim: torch.Tensor) -> torch.Tensor:
    """max_j' semantic_sim[i, j'] of each row i: [Q, K] -> [Q], 1 where the max is <= 0 (v_i = 0)."""
    row_max = semantic_sim.max(dim=1).values
    return torch.where(row_max > 0, row_max, torch.ones_like(row_max))


def lseh_margin_values(semantic_sim: torch.Tensor, row_max: torch.Tensor, *, alpha: float,
                       lam: float) -> torch.Tensor:
    """alpha + lam * semantic_sim / row_max, with row_max broadcast to semantic_sim's shape (no positive mask:
    HingeLoss masks positives in the cost)."""
    return alpha + lam * (semantic_sim / row_max)
