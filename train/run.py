"""Stage 2 entry point: run_train(cfg) trains on precomputed features and keeps last.pt / best.pt."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from common import distributed
from features.identity import data_identity
from features.reader import FeatureStore
from features.schema import CNN_ATTRS
from train.checkpoint import check_same_data, check_store_provenance, load_checkpoint
from train.config import TrainConfig
from train.data import CaptionBatches, RankShare
from train.losses import build_loss
from train.model import build_model
from train.preflight import check_device, check_store, open_run_dir, run_summary, warn_about_small_data
from train.run_dir import check_resume_config, check_run_dir
from train.text import Vocabulary, build_vocabulary
from train.trainer import Trainer, store_validator

logger = logging.getLogger(__name__)


def model_spec(store: FeatureStore, *, vocab_size: int) -> dict:
    """What rebuilding the model needs beyond its config, and the CNN the store's features came from."""
    return {"vocab_size": vocab_size, "feature_dim": store.feature_dim,
            "store_cnn": {key: store.attrs.get(key) for key in CNN_ATTRS}}


def run_train(cfg: TrainConfig) -> dict:
    """Train the VSE model of `cfg` on its feature store; return best rsum, epoch, step and artifact paths."""
    cfg.validate()
    # The run folder's config names the store absolutely: finetune, eval and encode default to it from anywhere.
    cfg = dataclasses.replace(cfg, store=str(Path(cfg.store).resolve()))
    device = check_device(cfg)
    checkpoint = None
    if cfg.resume:
        checkpoint = load_checkpoint(cfg.resume, expected_kind="train")  # FileNotFoundError when missing
        check_resume_config(cfg, checkpoint["config"], cfg.resume)
    out_dir = Path(cfg.out_dir)
    context = distributed.current()
    with FeatureStore(cfg.store) as store:
        check_store(cfg, store)
        fingerprint = None  # the store's, computed once
        if checkpoint is not None:
            check_store_provenance(checkpoint["model_spec"], store, source=f"--resume {cfg.resume}")
            fingerprint = check_same_data(checkpoint, store, source=f"--resume {cfg.resume}",
                                          fix="resume on the run's store (its --store), or start a new run "
                                              "without --resume")
        check_run_dir(out_dir, resume=cfg.resume, overwrite=cfg.overwrite)  # every rank, before the slow part
        if checkpoint is not None:
            vocab = Vocabulary.from_dict(checkpoint["vocab"])
        else:
            vocab = build_vocabulary(store, splits=cfg.all_train_splits(), min_count=cfg.vocab_min_count,
                                     tokenizer=cfg.tokenizer)
        batches = CaptionBatches(store, splits=cfg.all_train_splits(), vocab=vocab, feature_mode=cfg.feature_mode,
                                 batch_size=cfg.batch_size, seed=cfg.seed,
                                 share=RankShare(context.rank, context.world_size), region_drop=cfg.region_drop)
        warn_about_small_data(cfg, num_captions=batches.num_captions,
                              val_images=len(store.image_indices((cfg.val_split,))))
        open_run_dir(out_dir, cfg, vocab)
        torch.manual_seed(cfg.seed)  # model init; data order and crops are seeded from (seed, epoch, step)
        model = build_model(cfg, vocab_size=len(vocab), feature_dim=store.feature_dim)
        with context.main_first():  # rank 0 fits and caches LSEH's vectors, the others read the cache
            loss = build_loss(cfg, store=store)
        logger.info("training on %d captions (%d steps/epoch of %d), vocabulary %d words, %s features, loss %s "
                    "(%s similarity, %s margin), device %s, %d rank(s)", batches.num_captions,
                    batches.steps_per_epoch, cfg.batch_size, len(vocab), cfg.feature_mode, cfg.loss, cfg.similarity,
                    cfg.margin_source, device, context.world_size)
        trainer = Trainer(model, loss, config=cfg, batches=batches, out_dir=out_dir, vocab=vocab,
                          validate=store_validator(store, config=cfg, vocab=vocab, device=device),
                          model_spec=model_spec(store, vocab_size=len(vocab)), device=device,
                          data=data_identity(store, cfg.all_train_splits(), fingerprint=fingerprint)
                          if context.is_main else None)
        if checkpoint is not None:
            trainer.resume(cfg.resume, checkpoint=checkpoint)
        summary = trainer.fit()
    return run_summary(summary, out_dir)
