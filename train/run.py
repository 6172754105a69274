"""Stage 2 entry point: run_train(cfg) trains on precomputed features and keeps last.pt / best.pt."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch

from extract.device import resolve_device
from features.reader import FeatureStore
from train.checkpoint import load_checkpoint
from train.config import (
    AMP_MODES, DEVICES, FEATURE_MODES, GROUP_K_MODES, IMAGE_POOLS, LOSSES, REDUCTIONS, SPLIT_CHOICES,
    TEXT_POOLS, TrainConfig,
)
from train.data import CaptionBatches, store_kind
from train.model import build_model
from train.text import Vocabulary, build_vocabulary
from train.trainer import BEST, HINGE_LOSSES, LAST, METRICS, Trainer, store_validator

logger = logging.getLogger(__name__)

CONFIG_FILE, VOCAB_FILE = "config.json", "vocab.json"
# Options a resume may change; every other field must equal the checkpoint's (same run, same result).
RESUME_MUTABLE_FIELDS = ("resume", "out_dir", "store", "epochs", "max_steps", "val_every_steps", "log_every",
                         "workers", "device", "overwrite")


def prepare_run_dir(out_dir: Path, *, resume: str, overwrite: bool) -> None:
    """Create out_dir; refuse to start a fresh run over another run's checkpoints unless `overwrite`.

    A fresh start in a folder that holds last.pt/best.pt would silently replace a finished run, so it is an
    error naming the fix. With `overwrite` (or when no checkpoint exists) the old checkpoints and metrics.jsonl
    are removed, so the folder never mixes two runs. A resume keeps everything.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        return
    existing = [name for name in (LAST, BEST) if (out_dir / name).exists()]
    if existing and not overwrite:
        raise ValueError(f"{out_dir} already holds a run ({', '.join(existing)}); pass --resume "
                         f"{out_dir / 'last.pt'} to continue it, --overwrite to replace it, or another --out-dir")
    for name in (LAST, BEST, METRICS):
        if (out_dir / name).exists():
            logger.warning("removing %s from an earlier run in %s", name, out_dir)
            (out_dir / name).unlink()


def validate_options(cfg: TrainConfig) -> None:
    """Check enumerations, numbers and flag combinations without touching the disk (ValueError)."""
    choices = {"feature_mode": FEATURE_MODES, "image_pool": IMAGE_POOLS, "text_pool": TEXT_POOLS,
               "loss": LOSSES, "reduction": REDUCTIONS, "group_k_mode": GROUP_K_MODES, "device": DEVICES,
               "amp": AMP_MODES, "val_split": SPLIT_CHOICES}
    for name, valid in choices.items():
        if getattr(cfg, name) not in valid:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(cfg, name)!r} is not one of {', '.join(valid)}")
    for split in cfg.train_splits:
        if split not in SPLIT_CHOICES:
            raise ValueError(f"--train-splits {split!r} is not one of {', '.join(SPLIT_CHOICES)}")
    if cfg.val_split in cfg.all_train_splits():
        raise ValueError(f"--val-split {cfg.val_split!r} is also a training split; validate on held-out data")
    for name in ("embed_dim", "word_dim", "vocab_min_count", "epochs", "batch_size", "lr_decay_epochs", "group_k"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    for name in ("max_steps", "val_every_steps", "workers", "warmup_epochs", "grad_clip", "margin"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if not cfg.lr > 0 or not cfg.group_temperature > 0:
        raise ValueError(f"--lr ({cfg.lr}) and --group-temperature ({cfg.group_temperature}) must be > 0")
    if cfg.image_pool == "adaptive" and cfg.feature_mode != "10c-set":
        raise ValueError(f"--image-pool adaptive pools the ten crops, but --feature-mode is {cfg.feature_mode!r}; "
                         "use --feature-mode 10c-set (needs a store extracted with --crops 10)")
    if cfg.warmup_epochs and cfg.loss not in HINGE_LOSSES:
        raise ValueError(f"--warmup-epochs applies to hinge losses ({', '.join(HINGE_LOSSES)}), not --loss "
                         f"{cfg.loss!r}; set --warmup-epochs 0")
    if cfg.amp != "none" and resolve_device(cfg.device).type != "cuda":
        raise ValueError(f"--amp {cfg.amp} needs CUDA; use --amp none on the CPU")


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


def check_resume_config(cfg: TrainConfig, saved: dict, path: str, *,
                        mutable: Collection[str] = RESUME_MUTABLE_FIELDS) -> None:
    """A resume must use the configuration it was started with, apart from the `mutable` fields.

    Works for TrainConfig and its subclass FinetuneConfig (the saved dict is rebuilt as type(cfg)).
    """
    saved_cfg = type(cfg).from_dict(saved)
    differing = [f.name for f in dataclasses.fields(cfg) if f.name not in mutable
                 and getattr(cfg, f.name) != getattr(saved_cfg, f.name)]
    if differing:
        details = ", ".join(f"{name}: {getattr(saved_cfg, name)!r} -> {getattr(cfg, name)!r}" for name in differing)
        raise ValueError(f"--resume {path}: options differ from the checkpoint's ({details}); resume with the "
                         "same options or start a new run without --resume")


def run_train(cfg: TrainConfig) -> dict:
    """Train the VSE model of `cfg` on its feature store; return best rsum, epoch, step and artifact paths."""
    validate_options(cfg)
    device = resolve_device(cfg.device)
    checkpoint = None
    if cfg.resume:
        checkpoint = load_checkpoint(cfg.resume, expected_kind="train")  # FileNotFoundError when missing
        check_resume_config(cfg, checkpoint["config"], cfg.resume)
    out_dir = Path(cfg.out_dir)
    store = FeatureStore(cfg.store)
    try:
        check_store(cfg, store)
        prepare_run_dir(out_dir, resume=cfg.resume, overwrite=cfg.overwrite)
        if checkpoint is not None:
            vocab = Vocabulary.from_dict(checkpoint["vocab"])
        else:
            vocab = build_vocabulary(store, splits=cfg.all_train_splits(), min_count=cfg.vocab_min_count)
        vocab.save(out_dir / VOCAB_FILE)
        cfg.save_json(out_dir / CONFIG_FILE)
        torch.manual_seed(cfg.seed)  # model init; data order and crops are seeded from (seed, epoch, step)
        model = build_model(cfg, vocab_size=len(vocab), feature_dim=store.feature_dim)
        batches = CaptionBatches(store, splits=cfg.all_train_splits(), vocab=vocab, feature_mode=cfg.feature_mode,
                                 batch_size=cfg.batch_size, seed=cfg.seed)
        semantic_vectors = _semantic_vectors(cfg, store) if cfg.loss == "lseh" else None
        logger.info("training on %d captions (%d steps/epoch), vocabulary %d words, %s features, loss %s, "
                    "device %s", batches.num_captions, batches.steps_per_epoch, len(vocab), cfg.feature_mode,
                    cfg.loss, device)
        trainer = Trainer(model, config=cfg, batches=batches, out_dir=out_dir, vocab=vocab,
                          validate=store_validator(store, config=cfg, vocab=vocab, device=device),
                          model_spec={"vocab_size": len(vocab), "feature_dim": store.feature_dim},
                          semantic_vectors=semantic_vectors, device=device)
        if cfg.resume:
            trainer.resume(cfg.resume, checkpoint=checkpoint)
        summary = trainer.fit()
    finally:
        store.close()
    summary.update({"out_dir": str(out_dir), "config": str(out_dir / CONFIG_FILE),
                    "vocab": str(out_dir / VOCAB_FILE), "metrics": str(out_dir / METRICS)})
    return summary


def _semantic_vectors(cfg: TrainConfig, store: FeatureStore) -> np.ndarray:
    from train.semantic import load_or_fit_semantic_vectors  # scikit-learn only when LSEH is used

    vectors = load_or_fit_semantic_vectors(cfg.store, store, train_splits=cfg.all_train_splits(), seed=cfg.seed)
    return np.ascontiguousarray(vectors, dtype=np.float32)
