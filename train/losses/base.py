"""The loss interface: a module called once per step on the batch's embeddings, returning the scalar and what it logs."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from common import distributed
from train.losses.global_batch import GlobalBatch
from train.losses.similarity import similarity_function


class LossOutput(NamedTuple):
    """One step's loss: the scalar to minimise and the numbers worth logging (e.g. the group loss's k)."""

    loss: torch.Tensor
    logs: dict[str, float]


class VSELoss(nn.Module):
    """Base of every loss: the similarity is chosen once, at construction, by name ("cosine" or "order").

    Called as `loss(image_emb [B, E], caption_emb [B, E], image_ids [B], *, caption_ids [B], epoch, step)`:
    row b of both embeddings comes from caption b, image_ids are the store image rows (equal ids are
    positives), caption_ids the store caption rows (LSEH's semantic vectors are indexed by them), and
    (epoch, step) say where the step is, for state that depends on it (SH warm-up, the group loss's random k).

    In one process `batch_loss` scores the whole batch with the pure functions. Under torch.distributed
    (common.distributed.current() has several ranks) the batch is this rank's slice of the global batch:
    every rank's rows are gathered (GlobalBatch) and `local_loss` computes this rank's queries' share. The
    returned scalar then has the value of the global loss (the same on every rank) and the gradient of
    this rank's share, which summed over the ranks is the gradient of the global loss.
    """

    def __init__(self, *, similarity: str) -> None:
        super().__init__()
        self.similarity_name = similarity
        self.similarity = similarity_function(similarity)

    def forward(self, image_emb: torch.Tensor, caption_emb: torch.Tensor, image_ids: torch.Tensor, *,
                caption_ids: torch.Tensor, epoch: int, step: int) -> LossOutput:
        context = distributed.current()
        if not context.enabled:
            return self.batch_loss(image_emb, caption_emb, image_ids, caption_ids=caption_ids, epoch=epoch,
                                   step=step)
        batch = GlobalBatch.gather(image_emb, caption_emb, image_ids, caption_ids, context)
        share, logs = self.local_loss(batch, epoch=epoch, step=step)
        total = context.sum(share)
        return LossOutput(share + (total - share).detach(), logs)

    def batch_loss(self, image_emb: torch.Tensor, caption_emb: torch.Tensor, image_ids: torch.Tensor, *,
                   caption_ids: torch.Tensor, epoch: int, step: int) -> LossOutput:
        """The loss of a whole batch held by this process."""
        raise NotImplementedError

    def local_loss(self, batch: GlobalBatch, *, epoch: int, step: int) -> LossOutput:
        """This rank's share of the loss of the global batch (the shares of all ranks sum to it)."""
        raise NotImplementedError
