"""Load a train or finetune checkpoint into its model, vocabulary and config, whichever stage wrote it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from extract.backbones import build_backbone
from train.checkpoint import load_checkpoint, load_model_state
from train.config import TrainConfig
from train.finetune.config import FinetuneConfig
from train.finetune.run import attach_cnn
from train.model import VSEModel, build_model
from train.text import Vocabulary

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A checkpoint's model (eval mode, on its device), vocabulary, config and the checkpoint dict itself."""

    model: VSEModel
    vocab: Vocabulary
    config: TrainConfig  # a FinetuneConfig for kind "finetune"
    kind: str  # "train" (image side = head over stored features) or "finetune" (CNN + head over raw images)
    checkpoint: dict

    @property
    def has_cnn(self) -> bool:
        """True when the model embeds raw images itself (fine-tuned), False when it reads stored features."""
        return self.kind == "finetune"


def model_from_checkpoint(checkpoint: dict, *, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the model of a loaded checkpoint dict, weights loaded strictly, in eval mode on `device`.

    A "train" checkpoint gives the head over precomputed features; a "finetune" one also carries its CNN,
    whose architecture comes from model_spec["backbone"] and whose weights are the checkpoint's (neither the
    store nor the original weight file is needed).
    """
    kind = checkpoint["kind"]
    config_cls = FinetuneConfig if kind == "finetune" else TrainConfig
    config = config_cls.from_dict(checkpoint["config"], source="the checkpoint's config")
    vocab = Vocabulary.from_dict(checkpoint["vocab"])
    spec = checkpoint["model_spec"]
    model = build_model(config, vocab_size=spec["vocab_size"], feature_dim=spec["feature_dim"])
    if kind == "finetune":
        attach_cnn(model, config, backbone=build_backbone(spec["backbone"], None))  # weights: the checkpoint's
    load_model_state(model, checkpoint["model"])
    return LoadedModel(model.to(device).eval(), vocab, config, kind, checkpoint)


def load_model(path: str | Path, *, device: torch.device | str = "cpu") -> LoadedModel:
    """model_from_checkpoint of the checkpoint file at `path` (FileNotFoundError / ValueError when unusable)."""
    checkpoint = load_checkpoint(path, map_location="cpu")
    logger.info("loaded %s (%s checkpoint, epoch %d, step %d, best rsum %.2f)", path, checkpoint["kind"],
                checkpoint["epoch"], checkpoint["step"], checkpoint["best_rsum"])
    return model_from_checkpoint(checkpoint, device=device)
