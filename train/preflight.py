"""What the train and finetune stages check and prepare before the Trainer runs: the device, the store, small-data
warnings, the run folder; and the run's summary after it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from common import distributed
from common.device import check_amp, resolve_device
from features.reader import FeatureStore
from train.config import TrainConfig
from train.data import check_feature_mode
from train.run_dir import CONFIG_FILE, METRICS_FILE, VOCAB_FILE, prepare_run_dir
from train.text import Vocabulary

logger = logging.getLogger(__name__)


def check_device(cfg: TrainConfig) -> torch.device:
    """The device of this rank (cuda:LOCAL_RANK under torchrun); ValueError where --amp does not run (check_amp)."""
    device = resolve_device(cfg.device)
    check_amp(device, cfg.amp)
    return distributed.device_for(device, distributed.current())


MIN_STEPS_PER_EPOCH = 4  # fewer steps per epoch: few updates between validations, suggest a smaller batch
MIN_VAL_IMAGES = 25  # below, validation R@1 moves in steps of 4% or more: too coarse to choose best.pt on


def warn_about_small_data(cfg: TrainConfig, *, num_captions: int, val_images: int) -> None:
    """Small data: a batch that leaves an epoch only a step or two (suggest a batch size for several), and a
    validation split too small for its recall to choose a checkpoint on."""
    steps = -(-num_captions // cfg.batch_size)
    if steps < MIN_STEPS_PER_EPOCH and num_captions >= 2 * MIN_STEPS_PER_EPOCH:
        suggested = num_captions // MIN_STEPS_PER_EPOCH
        logger.warning("--batch-size %d gives %d step(s) per epoch on %d training captions (one validation per "
                       "epoch, few updates between them): --batch-size %d gives %d steps per epoch",
                       cfg.batch_size, steps, num_captions, suggested, -(-num_captions // suggested))
    if 0 < val_images < MIN_VAL_IMAGES:
        logger.warning("the %s split has %d images: its recall moves in steps of %.0f%%, too coarse to choose "
                       "best.pt on; validate on a split of at least %d images (--val-split), or judge by last.pt",
                       cfg.val_split, val_images, 100 / val_images, MIN_VAL_IMAGES)


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
    check_feature_mode(store, cfg.feature_mode)
    for splits in (cfg.all_train_splits(), (cfg.val_split,)):
        store.require_complete(splits)
        if len(store.image_indices(splits)) == 0:
            raise ValueError(f"{store.path} has no extracted images in splits {list(splits)}; check the split "
                             "names (--train-splits / --val-split) and the extraction")


def run_summary(summary: dict, out_dir: Path) -> dict:
    """The trainer's summary plus the paths of the run folder's files."""
    return {**summary, "out_dir": str(out_dir), "config": str(out_dir / CONFIG_FILE),
            "vocab": str(out_dir / VOCAB_FILE), "metrics": str(out_dir / METRICS_FILE)}
