"""Symmetric InfoNCE (CLIP-style) over the batch, with its learnable temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from train.losses.base import LossOutput, VSELoss, mean_of_directions
from train.losses.global_batch import GlobalBatch
from train.losses.similarity import validate_batch

INFONCE_INIT_TEMPERATURE = 0.07  # CLIP's initial temperature; logit_scale = log(1 / T)
INFONCE_MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the scale at 100


def info_nce_loss(sims: torch.Tensor, pos_mask: torch.Tensor, *, logit_scale: float | torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP-style) over the batch -> scalar.

    logit_scale is the multiplier exp(t) > 0 (CLIP's exp'd, clamped scale: `InfoNCELoss.scale()`),
    not the log. With L = logit_scale * sims, and same-image entries other than the diagonal set to
    -inf (a duplicate of the positive is neither a target nor a negative):
      loss = ( sum_b CE(L[b, :], target b) / B + sum_c CE(L[:, c], target c) / B ) / 2
    i.e. caption retrieval over each row and image retrieval over each column. Each direction is
    `query_cross_entropy`, the body InfoNCELoss runs on a rank's block of queries.
    """
    validate_batch(sims, pos_mask)
    if isinstance(logit_scale, torch.Tensor) and logit_scale.dim() != 0:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
    if not isinstance(logit_scale, torch.Tensor) and logit_scale <= 0:
        raise ValueError(f"logit_scale must be > 0 (the exp'd scale), got {logit_scale}")
    targets = torch.arange(sims.shape[0], device=sims.device)
    duplicates = pos_mask & ~torch.eye(sims.shape[0], dtype=torch.bool, device=sims.device)
    logits = sims * logit_scale
    return mean_of_directions(query_cross_entropy(logits, targets, duplicates),
                              query_cross_entropy(logits.T, targets, duplicates.T), pairs=sims.shape[0])


def query_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, duplicates: torch.Tensor) -> torch.Tensor:
    """sum_q CE(logits[q, :], targets[q]) with the `duplicates` entries at -inf: logits [Q, K] (scaled scores),
    targets int64 [Q], duplicates bool [Q, K] (same image as the target, not the target) -> scalar."""
    return F.cross_entropy(logits.masked_fill(duplicates, float("-inf")), targets, reduction="sum")


class InfoNCELoss(VSELoss):
    """info_nce_loss with the learnable log-scale `logit_scale` (CLIP's init log(1/0.07), clamped at log 100).

    The parameter belongs to the loss: the trainer optimises `loss.parameters()` with the model's and saves
    `loss.state_dict()` in every checkpoint. The scale is logged as a 0-dim tensor (read on log steps only).
    """

    def __init__(self, *, similarity: str) -> None:
        super().__init__(similarity=similarity)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / INFONCE_INIT_TEMPERATURE)))

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped at 100."""
        return self.logit_scale.clamp(max=INFONCE_MAX_LOGIT_SCALE).exp()

    def batch_loss(self, batch: GlobalBatch, *, epoch: int, step: int) -> LossOutput:
        scale = self.scale()
        targets = batch.targets()
        queries = torch.arange(batch.count, device=targets.device)
        totals = []
        for logits, duplicates in zip(batch.query_blocks(lambda rows, columns: self.similarity(rows, columns) * scale,
                                                         batch.image_emb, batch.caption_emb),
                                      batch.positive_masks()):
            duplicates = duplicates.clone()
            duplicates[queries, targets] = False  # the target stays, its duplicates go
            totals.append(query_cross_entropy(logits, targets, duplicates))
        return LossOutput(mean_of_directions(*totals, pairs=batch.size), {"logit_scale": scale.detach()})
