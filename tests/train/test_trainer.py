"""Tests of train/trainer.py: every loss trains every parameter, lr groups, interrupt handling."""

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from common.choices import LOSSES
from features.reader import FeatureStore
from train.checkpoint import load_checkpoint
from train.config import TrainConfig
from train.data import CaptionBatches, pad_token_ids
from train.losses import build_loss
from train.model import build_model
from train.text import build_vocabulary
from train.trainer import Trainer, store_validator

VOCAB, FEATURE_DIM = 20, 24


def _batch(feature_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = np.random.default_rng(0)
    ids = [generator.integers(1, VOCAB, length) for length in (3, 5, 4, 6, 2, 5)]
    tokens, lengths = pad_token_ids(ids)
    image_ids = torch.tensor([0, 1, 1, 2, 3, 4])  # captions 1 and 2 share an image
    return torch.randn(6, *feature_shape), tokens, lengths, image_ids


@pytest.mark.parametrize("loss,similarity", [(loss, "cosine") for loss in LOSSES] + [("mh", "order")])
@pytest.mark.parametrize("text_pool,image_pool,feature_shape", [("last", "mean", (FEATURE_DIM,)),
                                                               ("gpo", "adaptive", (10, FEATURE_DIM))])
def test_every_loss_reaches_every_trainable_parameter(loss: str, similarity: str, text_pool: str, image_pool: str,
                                                      feature_shape: tuple[int, ...]):
    torch.manual_seed(0)
    order = similarity == "order"
    config = TrainConfig(embed_dim=16, word_dim=8, loss=loss, similarity=similarity, text_pool=text_pool,
                         image_pool=image_pool, caption_head=True, abs_embeddings=order, margin=0.05 if order else 0.2)
    model = build_model(config, vocab_size=VOCAB, feature_dim=FEATURE_DIM)
    loss_fn = build_loss(config)
    images, tokens, lengths, image_ids = _batch(feature_shape)
    image_emb, caption_emb = model(images, tokens, lengths)
    value, logs = loss_fn(image_emb, caption_emb, image_ids, caption_ids=torch.arange(6), epoch=0, step=0)
    assert torch.isfinite(value) and value.item() >= 0
    assert ("k" in logs) == (loss == "group")
    value.backward()
    for name, parameter in [*model.named_parameters(), *loss_fn.named_parameters()]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{loss}: no gradient for {name}"


def _trainer(store: FeatureStore, config: TrainConfig, **kwargs) -> Trainer:
    torch.manual_seed(config.seed)
    vocab = build_vocabulary(store, splits=["train"], min_count=1)
    model = build_model(config, vocab_size=len(vocab), feature_dim=store.feature_dim)
    batches = CaptionBatches(store, splits=["train"], vocab=vocab, feature_mode=config.feature_mode,
                             batch_size=config.batch_size, seed=config.seed)
    return Trainer(model, build_loss(config), config=config, batches=batches, out_dir=config.out_dir, vocab=vocab,
                   validate=store_validator(store, config=config, vocab=vocab, device=torch.device("cpu")),
                   model_spec={"vocab_size": len(vocab), "feature_dim": store.feature_dim}, **kwargs)


def test_param_groups_keep_their_own_base_lr(store_path: Path, tiny_config: TrainConfig):
    with FeatureStore(store_path) as store:
        probe = _trainer(store, tiny_config)
        text = list(probe.model.text_encoder.parameters())
        image = list(probe.model.image_encoder.parameters())
        trainer = _trainer(store, tiny_config)
        trainer = Trainer(trainer.model, trainer.loss, config=tiny_config, batches=trainer.batches, validate=trainer.validate,
                          out_dir=tiny_config.out_dir, vocab=trainer.vocab, model_spec=trainer.model_spec,
                          param_groups=[{"params": text, "lr": 1.0}, {"params": image, "lr": 10.0}])
        trainer.epoch = tiny_config.lr_decay_epochs
        trainer.apply_learning_rate()
        assert [group["lr"] for group in trainer.optimizer.param_groups] == pytest.approx([0.1, 1.0])
        text[0].requires_grad_(False)
        with pytest.raises(ValueError, match="frozen"):
            Trainer(trainer.model, trainer.loss, config=tiny_config, batches=trainer.batches, validate=trainer.validate,
                    out_dir=tiny_config.out_dir, vocab=trainer.vocab, model_spec=trainer.model_spec,
                    param_groups=[{"params": text, "lr": 1.0}])


def test_ctrl_c_saves_last_at_a_step_boundary(store_path: Path, tiny_config: TrainConfig,
                                              monkeypatch: pytest.MonkeyPatch):
    original_step = Trainer.train_step

    def step_then_interrupt(self: Trainer, batch):
        result = original_step(self, batch)
        if self.step == 1:  # the second step: Ctrl-C arrives in the middle of it
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(Trainer, "train_step", step_then_interrupt)
    with FeatureStore(store_path) as store:
        trainer = _trainer(store, tiny_config)
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
    checkpoint = load_checkpoint(Path(tiny_config.out_dir) / "last.pt")
    assert (checkpoint["step"], checkpoint["step_in_epoch"], checkpoint["epoch"]) == (2, 2, 0)
    assert all(torch.equal(value, trainer.model.state_dict()[key]) for key, value in checkpoint["model"].items())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
