"""Stage 2 entry point: run_train(cfg) trains on precomputed features and keeps last.pt / best.pt."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from common import distributed
from common.device import resolve_device
from features.reader import FeatureStore
from features.schema import CNN_ATTRS
from train.checkpoint import check_store_provenance, load_checkpoint
from train.config import TrainConfig
from train.data import CaptionBatches, RankShare, store_kind
from train.losses import build_loss
from train.model import build_model
from train.run_dir import (
    CONFIG_FILE, METRICS_FILE, VOCAB_FILE, check_resume_config, check_run_dir, prepare_run_dir,
)
from train.text import Vocabulary, build_vocabulary
from train.trainer import Trainer, store_validator

logger = logging.getLogger(__name__)


def check_device(cfg: TrainConfig) -> torch.device:
    """The device of this rank (cuda:LOCAL_RANK under torchrun); --amp needs CUDA (ValueError otherwise)."""
    device = resolve_device(cfg.device)
    if cfg.amp != "none" and device.type != "cuda":
        raise ValueError(f"--amp {cfg.amp} needs CUDA; use --amp none on the CPU")
    return distributed.device_for(device, distributed.current())


def warn_if_one_step_per_epoch(cfg: TrainConfig, num_captions: int) -> None:
    """A batch larger than the training set makes every epoch one step: say so (small data, or a wrong split)."""
    if cfg.batch_size >= num_captions:
        logger.warning("--batch-size %d covers all %d training captions: every epoch is a single step (hard "
                       "negatives are searched over the whole set); use a smaller batch for more steps",
                       cfg.batch_size, num_captions)


def open_run_dir(out_dir: Path, cfg: TrainConfig, vocab: Vocabulary) -> None:
    """Rank 0 creates the run folder and writes the vocabulary and the config; the other ranks wait for it."""
    context = distributed.current()
    if context.is_main:
        prepare_run_dir(out_dir, resume=cfg.resume, overwrite=cfg.overwrite)
        vocab.save(out_dir / VOCAB_FILE)
        cfg.save_json(out_dir / CONFIG_FILE)
    context.barrier()


def check_store(cfg: TrainConfig, store: FeatureStore) -> None:
    """The store must hold the features and complete, non-empty splits this config needs."""
    if store_kind(cfg.feature_mode) == "10c" and store.crops != 10:
        raise ValueError(f"--feature-mode {cfg.feature_mode} needs ten-crop features, but {store.path} was "
                         f"extracted with crops={store.crops}; use --feature-mode 1c or re-extract with --crops 10")
    for splits in (cfg.all_train_splits(), (cfg.val_split,)):
        store.require_complete(splits)
        if len(store.image_indices(splits)) == 0:
            raise ValueError(f"{store.path} has no extracted images in splits {list(splits)}; check the split "
                             "names (--train-splits / --val-split) and the extraction")


def model_spec(store: FeatureStore, *, vocab_size: int) -> dict:
    """What rebuilding the model needs beyond its config, and the CNN the store's features came from."""
    return {"vocab_size": vocab_size, "feature_dim": store.feature_dim,
            "store_cnn": {key: store.attrs.get(key) for key in CNN_ATTRS}}


def run_summary(summary: dict, out_dir: Path) -> dict:
    """The trainer's summary plus the paths of the run folder's files."""
    return {**summary, "out_dir": str(out_dir), "config": str(out_dir / CONFIG_FILE),
            "vocab": str(out_dir / VOCAB_FILE), "metrics": str(out_dir / METRICS_FILE)}


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
        if checkpoint is not None:
            check_store_provenance(checkpoint["model_spec"], store, source=f"--resume {cfg.resume}")
        check_run_dir(out_dir, resume=cfg.resume, overwrite=cfg.overwrite)  # every rank, before the slow part
        if checkpoint is not None:
            vocab = Vocabulary.from_dict(checkpoint["vocab"])
        else:
            vocab = build_vocabulary(store, splits=cfg.all_train_splits(), min_count=cfg.vocab_min_count)
        batches = CaptionBatches(store, splits=cfg.all_train_splits(), vocab=vocab, feature_mode=cfg.feature_mode,
                                 batch_size=cfg.batch_size, seed=cfg.seed,
                                 share=RankShare(context.rank, context.world_size))
        warn_if_one_step_per_epoch(cfg, batches.num_captions)
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
                          model_spec=model_spec(store, vocab_size=len(vocab)), device=device)
        if checkpoint is not None:
            trainer.resume(cfg.resume, checkpoint=checkpoint)
        summary = trainer.fit()
    return run_summary(summary, out_dir)
