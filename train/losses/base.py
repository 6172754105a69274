"""The loss interface: a module called once per step on the batch's embeddings, returning the scalar and what it logs."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

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
    """

    def __init__(self, *, similarity: str) -> None:
        super().__init__()
        self.similarity_name = similarity
        self.similarity = similarity_function(similarity)

    def forward(self, image_emb: torch.Tensor, caption_emb: torch.Tensor, image_ids: torch.Tensor, *,
                caption_ids: torch.Tensor, epoch: int, step: int) -> LossOutput:
        raise NotImplementedError
