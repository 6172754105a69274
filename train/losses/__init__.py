"""Losses: `build_loss(config)` returns the configured loss module (open_clip's create_loss), built once per run.

Three choices make a loss: how negatives combine (`--loss`: sh, mh, group, infonce), the similarity
(`--similarity`: cosine or order) and, for the hinge losses, where the margin comes from (`--margin-source`:
constant alpha or LSEH's semantic margins). One file per loss holds its pure function (the math, checked
against brute force and the reference implementation) and its module, whose one body (`batch_loss`) runs the
same per-direction function on a rank's blocks of the global batch (one process: the whole batch):
  similarity.py  cosine / order similarity, positive mask, the batch convention
  hinge.py       SH (paper eq. 5) and MH (eq. 6), HingeLoss (with SH warm-up and LSEH margins)
  lseh.py        LSEH margins (Gong & Cosma);  semantic.py  their TF-IDF + SVD caption vectors
  group.py       dynamic group of hard negatives with adaptive k (Zhang et al.), GroupLoss
  infonce.py     symmetric InfoNCE with a learnable temperature, InfoNCELoss
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from train.losses.base import LossOutput, VSELoss
from train.losses.group import GroupLoss
from train.losses.hinge import HingeLoss
from train.losses.infonce import InfoNCELoss

__all__ = ["LOSS_OPTIONS", "LossOutput", "VSELoss", "build_loss", "unused_loss_options"]

# The options each loss reads; any other loss option set away from its default is refused (never ignored).
LOSS_OPTIONS: dict[str, tuple[str, ...]] = {
    "sh": ("margin", "reduction", "margin_source", "lseh_lambda"),
    "mh": ("margin", "reduction", "margin_source", "lseh_lambda", "warmup_epochs"),
    "group": ("margin", "group_k_mode", "group_k", "group_temperature", "group_gamma"),
    "infonce": (),
}
# Options read only under one value of another option.
OPTION_CONDITIONS: dict[str, tuple[str, Any]] = {
    "lseh_lambda": ("margin_source", "lseh"),
    "group_k": ("group_k_mode", "constant"),
    "group_gamma": ("group_k_mode", "adaptive"),
}
ALL_LOSS_OPTIONS = tuple(sorted({name for names in LOSS_OPTIONS.values() for name in names}))


def unused_loss_options(config: Any) -> list[str]:
    """Loss options of `config` (a TrainConfig) set away from their defaults that its loss would not read."""
    defaults = {field.name: field.default for field in dataclasses.fields(config)}
    used = set(LOSS_OPTIONS.get(config.loss, ()))
    for name, (other, value) in OPTION_CONDITIONS.items():
        if getattr(config, other) != value:
            used.discard(name)
    return [name for name in ALL_LOSS_OPTIONS if name not in used and getattr(config, name) != defaults[name]]


def lseh_semantic_vectors(config: Any, store: Any) -> np.ndarray:
    """float32 [num_captions, V] LSEH vectors of the store's captions, fitted on the training splits (cached)."""
    from train.losses.semantic import load_or_fit_semantic_vectors  # scikit-learn: imported only for LSEH

    vectors = load_or_fit_semantic_vectors(store.path, store, train_splits=config.all_train_splits(),
                                           seed=config.seed)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def build_loss(config: Any, *, store: Any = None) -> VSELoss:
    """The loss module of a TrainConfig; LSEH margins read the captions of `store` (a FeatureStore)."""
    semantic_vectors = None
    if config.margin_source == "lseh":
        if store is None:
            raise ValueError("LSEH margins need the feature store whose captions they describe")
        semantic_vectors = lseh_semantic_vectors(config, store)
    if config.loss in ("sh", "mh"):
        return HingeLoss(similarity=config.similarity, max_violation=config.loss == "mh", margin=config.margin,
                         reduction=config.reduction, warmup_epochs=config.warmup_epochs,
                         semantic_vectors=semantic_vectors, lseh_lambda=config.lseh_lambda)
    if config.loss == "group":
        return GroupLoss(similarity=config.similarity, k_mode=config.group_k_mode, k=config.group_k,
                         gamma=config.group_gamma, temperature=config.group_temperature, margin=config.margin,
                         seed=config.seed)
    if config.loss == "infonce":
        return InfoNCELoss(similarity=config.similarity)
    raise ValueError(f"unknown loss {config.loss!r}; valid: {', '.join(LOSS_OPTIONS)}")
