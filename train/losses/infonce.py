"""Symmetric InfoNCE (CLIP-style) over the batch, with its learnable temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from train.losses.base import LossOutput, VSELoss
from train.losses.global_batch import GlobalBatch
from train.losses.similarity import positive_mask, validate_batch

INFONCE_INIT_TEMPERATURE = 0.07  # CLIP's initial temperature; logit_scale = log(1 / T)
INFONCE_MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the scale at 100


def info_nce_loss(sims: torch.Tensor, pos_mask: torch.Tensor, *, logit_scale: float | torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP-style) over the batch -> scalar.

    logit_scale is the multiplier exp(t) > 0 (CLIP's exp'd, clamped scale: `InfoNCELoss.scale()`),
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


class InfoNCELoss(VSELoss):
    """info_nce_loss with the learnable log-scale `logit_scale` (CLIP's init log(1/0.07), clamped at log 100).

    The parameter belongs to the loss: the trainer optimises `loss.parameters()` with the model's and saves
    `loss.state_dict()` in every checkpoint.
    """

    def __init__(self, *, similarity: str) -> None:
        super().__init__(similarity=similarity)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / INFONCE_INIT_TEMPERATURE)))

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped at 100."""
        return self.logit_scale.clamp(max=INFONCE_MAX_LOGIT_SCALE).exp()

    def batch_loss(self, image_emb: torch.Tensor, caption_emb: torch.Tensor, image_ids: torch.Tensor, *,
                   caption_ids: torch.Tensor, epoch: int, step: int) -> LossOutput:
        sims = self.similarity(image_emb, caption_emb)
        scale = self.scale()
        loss = info_nce_loss(sims, positive_mask(image_ids, image_ids), logit_scale=scale)
        return LossOutput(loss, {"logit_scale": float(scale.detach())})

    def local_loss(self, batch: GlobalBatch, *, epoch: int, step: int) -> LossOutput:
        scale = self.scale()
        targets = batch.targets()
        mask = batch.positive_mask()
        mask[torch.arange(batch.count, device=mask.device), targets] = False  # the target stays, its duplicates go
        total = sum(F.cross_entropy((scores * scale).masked_fill(mask, float("-inf")), targets, reduction="sum")
                    for scores in batch.query_scores(self.similarity))
        return LossOutput(total / (2 * batch.size), {"logit_scale": float(scale.detach())})
