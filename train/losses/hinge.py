"""The VSE++ hinge triplet losses: SH (sum of hinges, VSE0) and MH (max of hinges, VSE++), pure and as a module."""

from __future__ import annotations

import numpy as np
import torch

from common.choices import REDUCTIONS
from train.losses.base import LossOutput, VSELoss, reduce_sum
from train.losses.global_batch import GlobalBatch
from train.losses.lseh import LSEH_LAMBDA, lseh_margin_values, lseh_row_normaliser
from train.losses.similarity import validate_batch

MARGIN = 0.2  # the paper's hinge margin alpha
ORDER_MARGIN = 0.05  # Order++ (paper Table 4, after Vendrov et al.)


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
    entry (b, c) by both directions (LSEH: `lseh_margins` of train/losses/lseh.py).
    Each direction is `query_hinges`, the body HingeLoss runs on a rank's block of queries.
    """
    validate_batch(sims, pos_mask)
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    margin = _margin_matrix(margin, sims)
    margin_t = margin.T if isinstance(margin, torch.Tensor) else margin
    positive = sims.diagonal()  # [B]
    total = (query_hinges(sims, positive, pos_mask, margin, max_violation)
             + query_hinges(sims.T, positive, pos_mask.T, margin_t, max_violation))
    return reduce_sum(total, reduction, sims.shape[0])


def query_hinges(scores: torch.Tensor, positive: torch.Tensor, pos_mask: torch.Tensor,
                 margin: float | torch.Tensor, max_violation: bool) -> torch.Tensor:
    """One direction of contrastive_loss for a block of queries: scores [Q, K], positive [Q], pos_mask [Q, K],
    margin a float or [Q, K] -> scalar.

    h[q, k] = [m[q, k] + scores[q, k] - positive[q]]_+ over the negatives (pos_mask False); MH sums each
    query's max over k, SH sums every h.
    """
    # where, not masked_fill: it keeps the layout of a transposed block, so SH sums in the order of sims
    cost = torch.where(pos_mask, 0.0, (margin + scores - positive.unsqueeze(1)).clamp(min=0))
    if max_violation:  # hinges are >= 0, so the masked 0s never exceed a real negative's hinge
        return cost.max(dim=1).values.sum()
    return cost.sum()


class HingeLoss(VSELoss):
    """SH or MH on the configured similarity, with an optional SH warm-up and constant or LSEH margins.

    MH (`max_violation`) uses SH for the first `warmup_epochs` epochs (the guard against MH's slow start,
    paper Fig. 2). With `semantic_vectors` [num_captions, V] (LSEH, Gong & Cosma) the margin of pair (b, c)
    is lseh_margins(v v^T)[b, c] with alpha = `margin`; the vectors stay on the CPU and only the batch's rows
    move to the device.
    """

    def __init__(self, *, similarity: str, max_violation: bool, margin: float = MARGIN, reduction: str = "sum",
                 warmup_epochs: int = 0, semantic_vectors: np.ndarray | None = None,
                 lseh_lambda: float = LSEH_LAMBDA) -> None:
        super().__init__(similarity=similarity)
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
        self.max_violation, self.margin, self.reduction = max_violation, margin, reduction
        self.warmup_epochs, self.lseh_lambda = warmup_epochs, lseh_lambda
        self.semantic_vectors = semantic_vectors

    def uses_max_violation(self, epoch: int) -> bool:
        """MH from epoch `warmup_epochs` on (SH before it); SH throughout when built without max_violation."""
        return self.max_violation and epoch >= self.warmup_epochs

    def margins(self, batch: GlobalBatch, dtype: torch.dtype) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """The margins of this rank's (caption-retrieval, image-retrieval) blocks: alpha, or LSEH's m[b, c]."""
        if self.semantic_vectors is None:
            return self.margin, self.margin
        vectors = torch.from_numpy(self.semantic_vectors[batch.caption_ids.cpu().numpy()])
        vectors = vectors.to(batch.image_emb.device, dtype)
        row_dots, column_dots = batch.query_blocks(lambda rows, columns: rows @ columns.T, vectors, vectors)
        row_max = lseh_row_normaliser(row_dots)  # [n]: the normaliser of this rank's image rows b
        every_row_max = batch.gather_values(row_max)  # [G]: of every image row b
        return (lseh_margin_values(row_dots, row_max.unsqueeze(1), alpha=self.margin, lam=self.lseh_lambda),
                lseh_margin_values(column_dots, every_row_max.unsqueeze(0), alpha=self.margin, lam=self.lseh_lambda))

    def batch_loss(self, batch: GlobalBatch, *, epoch: int, step: int) -> LossOutput:
        caption_scores, image_scores = batch.query_scores(self.similarity)
        caption_mask, image_mask = batch.positive_masks()
        caption_margin, image_margin = self.margins(batch, caption_scores.dtype)
        max_violation = self.uses_max_violation(epoch)
        total = (query_hinges(caption_scores, batch.positives(caption_scores), caption_mask, caption_margin,
                              max_violation)
                 + query_hinges(image_scores, batch.positives(image_scores), image_mask, image_margin, max_violation))
        return LossOutput(reduce_sum(total, self.reduction, batch.size), {})
