"""The VSE++ hinge triplet losses: SH (sum of hinges, VSE0) and MH (max of hinges, VSE++), pure and as a module."""

from __future__ import annotations

import numpy as np
import torch

from common.choices import REDUCTIONS
from train.losses.base import LossOutput, VSELoss
from train.losses.global_batch import GlobalBatch
from train.losses.lseh import LSEH_ALPHA, LSEH_LAMBDA, lseh_margins
from train.losses.similarity import positive_mask, validate_batch

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

    def _vectors(self, caption_ids: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The semantic vectors of the given captions, on `device`."""
        return torch.from_numpy(self.semantic_vectors[caption_ids.cpu().numpy()]).to(device)

    def batch_loss(self, image_emb: torch.Tensor, caption_emb: torch.Tensor, image_ids: torch.Tensor, *,
                   caption_ids: torch.Tensor, epoch: int, step: int) -> LossOutput:
        sims = self.similarity(image_emb, caption_emb)
        pos_mask = positive_mask(image_ids, image_ids)
        margin: float | torch.Tensor = self.margin
        if self.semantic_vectors is not None:
            vectors = self._vectors(caption_ids, sims.device)
            margin = lseh_margins((vectors @ vectors.T).to(sims.dtype), pos_mask, alpha=self.margin,
                                  lam=self.lseh_lambda)
        loss = contrastive_loss(sims, pos_mask, margin=margin, max_violation=self.uses_max_violation(epoch),
                                reduction=self.reduction)
        return LossOutput(loss, {})

    def local_loss(self, batch: GlobalBatch, *, epoch: int, step: int) -> LossOutput:
        caption_scores, image_scores = batch.query_scores(self.similarity)
        mask = batch.positive_mask()
        caption_margin: float | torch.Tensor = self.margin
        image_margin: float | torch.Tensor = self.margin
        if self.semantic_vectors is not None:
            vectors = self._vectors(batch.caption_ids, caption_scores.device).to(caption_scores.dtype)
            dots = vectors[batch.local] @ vectors.T  # [n, G]; v_b . v_c is symmetric in (b, c)
            row_max = dots.max(dim=1).values
            row_max = torch.where(row_max > 0, row_max, torch.ones_like(row_max))  # as lseh_margins
            all_row_max = batch.gather_values(row_max)  # [G]: the normaliser of every image row b
            caption_margin = self.margin + self.lseh_lambda * dots / row_max.unsqueeze(1)  # m[b, c], b local
            image_margin = self.margin + self.lseh_lambda * dots / all_row_max.unsqueeze(0)  # m[b, c], c local
        max_violation = self.uses_max_violation(epoch)
        total = (query_hinges(caption_scores, batch.positives(caption_scores), mask, caption_margin, max_violation)
                 + query_hinges(image_scores, batch.positives(image_scores), mask, image_margin, max_violation))
        return LossOutput(total if self.reduction == "sum" else total / batch.size, {})


def query_hinges(scores: torch.Tensor, positive: torch.Tensor, pos_mask: torch.Tensor,
                 margin: float | torch.Tensor, max_violation: bool) -> torch.Tensor:
    """Sum over queries of their hinges: scores [Q, K], positive [Q], pos_mask [Q, K] -> scalar.

    h[q, k] = [m[q, k] + scores[q, k] - positive[q]]_+ over the negatives (pos_mask False); MH takes each
    query's max over k, SH the sum. One direction of contrastive_loss, for a block of queries.
    """
    cost = (margin + scores - positive.unsqueeze(1)).clamp(min=0).masked_fill(pos_mask, 0)
    per_query = cost.max(dim=1).values if max_violation else cost.sum(dim=1)
    return per_query.sum()
