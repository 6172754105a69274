"""One training step as a module (model forward + loss), and its DistributedDataParallel wrapping."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from common import distributed
from train.data import Batch
from train.losses import LossOutput, VSELoss
from train.model import VSEModel


class TrainingStep(nn.Module):
    """Model and loss as one module: batch -> LossOutput (what DistributedDataParallel wraps, so that the
    loss's own parameters, InfoNCE's temperature, are synchronised like the model's)."""

    def __init__(self, model: VSEModel, loss: VSELoss, *, autocast_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model, self.loss, self.autocast_dtype = model, loss, autocast_dtype

    def forward(self, batch: Batch, *, epoch: int, step: int) -> LossOutput:
        device_type = batch.images.device.type
        with torch.autocast(device_type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            image_emb, caption_emb = self.model(batch.images, batch.tokens, batch.lengths, batch.image_lengths)
        return self.loss(image_emb.float(), caption_emb.float(), batch.image_ids, caption_ids=batch.caption_rows,
                         epoch=epoch, step=step)


def _sum_gradients(state, bucket):  # no annotations: DDP checks them, and this module's would be strings
    """DDP comm hook: sum the ranks' gradients. Each rank's loss holds its share of the global batch's loss
    (train/losses/global_batch.py), so the shares' gradients add up to the single-process gradient."""
    work = torch.distributed.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


def distributed_step(step: TrainingStep, device: torch.device) -> nn.Module:
    """`step` wrapped in DistributedDataParallel (gradients summed, not averaged) when several ranks train."""
    if not distributed.current().enabled:
        return step
    wrapped = DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)
    wrapped.register_comm_hook(None, _sum_gradients)
    return wrapped
