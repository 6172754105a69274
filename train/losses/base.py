"""The loss interface: a module called once per step on the batch's embeddings, returning the scalar and what it logs."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from common import distributed
from train.losses.global_batch import GlobalBatch
from train.losses.similarity import similarity_function


class LossOutput(NamedTuple):
    """One step's loss: the scalar to minimise and the numbers worth logging (e.g. the group loss's k).

    Logged values may be 0-dim tensors: reading them waits for the device, so the trainer reads them only on
    the steps it logs.
    """

    loss: torch.Tensor
    logs: dict[str, float | torch.Tensor]


class VSELoss(nn.Module):
    """Base of every loss: the similarity is chosen once, at construction, by name ("cosine" or "order").

    Called as `loss(image_emb [B, E], caption_emb [B, E], image_ids [B], *, caption_ids [B], epoch, step)`:
    row b of both embeddings comes from caption b, image_ids are the store image rows (equal ids are
    positives), caption_ids the store caption rows (LSEH's semantic vectors are indexed by them), and
    (epoch, step) say where the step is, for state that depends on it (SH warm-up, the group loss's random k).

    Each loss has one body, `batch_loss(batch)`: this rank's queries of the global batch against all its
    candidates (train/losses/global_batch.py). One process is the global batch of one rank, so its share is
    the whole loss. Under torch.distributed the returned scalar has the value of the global loss (the same on
    every rank) and the gradient of this rank's share, which summed over the ranks is the gradient of the
    global loss.
    """

    def __init__(self, *, similarity: str) -> None:
        super().__init__()
        self.similarity_name = similarity
        self.similarity = similarity_function(similarity)

    def forward(self, image_emb: torch.Tensor, caption_emb: torch.Tensor, image_ids: torch.Tensor, *,
                caption_ids: torch.Tensor, epoch: int, step: int) -> LossOutput:
        context = distributed.current()
        batch = GlobalBatch.gather(image_emb, caption_emb, image_ids, caption_ids, context)
        share, logs = self.batch_loss(batch, epoch=epoch, step=step)
        if not context.enabled:
            return LossOutput(share, logs)
        total = context.sum(share)
        return LossOutput(share + (total - share).detach(), logs)

    def batch_loss(self, batch: GlobalBatch, *, epoch: int, step: int) -> LossOutput:
        """This rank's share of the loss of the global batch (the shares of all ranks sum to it)."""
        raise NotImplementedError


def reduce_sum(total: torch.Tensor, reduction: str, pairs: int) -> torch.Tensor:
    """A summed loss as `reduction` asks: "sum" (the paper's) as is, "mean" divided by the global batch's pairs."""
    return total if reduction == "sum" else total / pairs


def mean_of_directions(caption_total: torch.Tensor, image_total: torch.Tensor, *, pairs: int) -> torch.Tensor:
    """(caption-retrieval sum / B + image-retrieval sum / B) / 2: the per-query mean of both directions, B the
    global batch's pairs (a rank's sums give its share)."""
    return (caption_total / pairs + image_total / pairs) / 2
