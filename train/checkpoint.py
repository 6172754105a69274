"""Checkpoints: atomic save, validated load, strict weight loading, RNG state capture and restore."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn

from common.files import atomic_write
from features.identity import IDENTITY_VERSION, store_fingerprint, training_overlap

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the keys below change incompatibly
CHECKPOINT_KINDS = ("train", "finetune")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first bytes of an HDF5 file (a feature store)
EXPORT_FORMAT = "vsepp-model"  # the "format" of an exported model file (retrieval/model.py's MODEL_FILE_FORMAT)
# (found, expected) kind -> what to pass instead
KIND_HINTS = {("finetune", "train"): ": fine-tuning starts from the train stage's checkpoint (TRAIN_RUN/best.pt); "
                                     "to continue this fine-tune, pass it as --resume with its --out-dir",
              ("train", "finetune"): ": --resume continues a fine-tune from its own last.pt; a train checkpoint "
                                     "goes to --checkpoint"}
# Where the run is: the next step starts at (epoch, step_in_epoch), `step` steps are done, the best validation
# rsum was reached at (best_epoch, best_step), and the last validation ran after `validated_step` steps.
PROGRESS_KEYS = ("epoch", "step", "step_in_epoch", "best_rsum", "best_epoch", "best_step", "validated_step")
REQUIRED_KEYS = ("format_version", "kind", "model", "loss", "optimizer", "scaler", *PROGRESS_KEYS, "rng", "vocab",
                 "config", "model_spec")
DIGEST_KEYS = ("paths", "captions", "content")  # features.identity.data_identity's digest arrays


def capture_rng_state() -> dict:
    """Python, numpy (global), torch CPU and (when present) CUDA RNG states, as tensors and plain values."""
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": numpy_state[0], "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                  "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                  "cached_gaussian": float(numpy_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of capture_rng_state."""
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, *, model: nn.Module, loss: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None, kind: str, progress: dict, vocab: dict, config: dict,
                    model_spec: dict, data: dict | None = None) -> None:
    """Write everything that determines the next step to `path`, atomically and durably.

    `progress` holds the PROGRESS_KEYS (where the next step starts, steps done, the best validation and the
    last one), stored as top-level keys. `loss` is the loss module (its state: InfoNCE's temperature).
    `vocab` and `config` are plain dicts (Vocabulary.to_dict, TrainConfig.to_dict); `model_spec` holds what
    rebuilding the model needs beyond the config (vocab_size, feature_dim, the store's CNN provenance).
    `data` is features.identity.data_identity of the training data (saved under "data"; None: not known).
    A crash never leaves a truncated checkpoint (common.files.atomic_write).
    """
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"checkpoint kind {kind!r} is not one of {CHECKPOINT_KINDS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION, "kind": kind, "model": model.state_dict(), "loss": loss.state_dict(),
        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
        **{key: progress[key] for key in PROGRESS_KEYS},
        "rng": capture_rng_state(), "vocab": vocab, "config": config, "model_spec": model_spec,
        "data": identity_to_save(data),
    }
    atomic_write(path, lambda handle: save_to_file(payload, handle), durable=True)


def save_to_file(payload: dict, handle: BinaryIO) -> None:
    """torch.save into an open file; a failed write (a full disk) is raised as the OSError it is.

    torch's zip writer reports it as RuntimeError("[enforce fail at inline_container.cc] unexpected pos ..."),
    with the file's OSError only as the context; the OSError names the cause and the CLI knows what to say.
    """
    try:
        torch.save(payload, handle)
    except RuntimeError as err:
        if isinstance(err.__context__, OSError):
            raise err.__context__ from err
        raise


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu",
                    expected_kind: str | None = None) -> dict:
    """Read and validate a checkpoint; FileNotFoundError if missing, ValueError if not ours or wrong kind."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; pass an existing last.pt/best.pt "
                                "(a resume never silently starts from scratch)")
    with open(path, "rb") as handle:
        if handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            raise ValueError(f"{path} is an HDF5 feature store, not a checkpoint; pass it as --store, and a "
                             "train or finetune checkpoint (RUN/best.pt, RUN/last.pt) as --checkpoint / --resume")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise ValueError(f"{path}: cannot be read as a checkpoint ({type(err).__name__}: {err})") from err
    missing = [key for key in REQUIRED_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing and isinstance(checkpoint, dict) and checkpoint.get("format") == EXPORT_FORMAT:
        raise ValueError(f"{path} is an exported model (`export`): it holds the weights only, no optimizer or run "
                         "state; pass the train run's checkpoint (TRAIN_RUN/best.pt) to finetune, or a run's last.pt "
                         "to --resume")
    if missing:
        raise ValueError(f"{path}: not a checkpoint of this pipeline (missing keys {missing})")
    if checkpoint["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {checkpoint['format_version']} found, this code reads "
                         f"{FORMAT_VERSION}; retrain or use the version of the code that wrote it")
    if expected_kind is not None and checkpoint["kind"] != expected_kind:
        hint = KIND_HINTS.get((checkpoint["kind"], expected_kind), "")
        raise ValueError(f"{path} is a {checkpoint['kind']!r} checkpoint, expected {expected_kind!r}" + hint)
    return checkpoint


def load_model_state(model: nn.Module, state: dict, *, source: str = "checkpoint") -> None:
    """Strict load: a missing or unexpected key, or a tensor of another shape, is a ValueError listing them."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source} does not fit the model: missing keys {missing[:20]}, unexpected keys "
                         f"{unexpected[:20]}; was it written with other model options (text/image pool, "
                         "caption head, loss)?")
    reshaped = [f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}" for key, value in own.items()
                if tuple(state[key].shape) != tuple(value.shape)]
    if reshaped:
        raise ValueError(f"{source} does not fit the model: tensors of other shapes (checkpoint vs model) "
                         f"{reshaped[:5]}; the store's feature size or the vocabulary differs from the run's")
    model.load_state_dict(state, strict=True)


def restore_training_state(checkpoint: dict, *, model: nn.Module, loss: nn.Module,
                           optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """Load model, loss, optimizer, scaler and RNG states of `checkpoint` (counters are the caller's)."""
    load_model_state(model, checkpoint["model"])
    load_model_state(loss, checkpoint["loss"], source="the checkpoint's loss state")
    optimizer.load_state_dict(checkpoint["optimizer"])
    if (checkpoint["scaler"] is None) != (scaler is None):
        raise ValueError("the checkpoint and this run disagree on fp16 loss scaling (--amp); resume with the "
                         "same --amp as the run that wrote it")
    if scaler is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    restore_rng_state(checkpoint["rng"])


def check_store_provenance(model_spec: dict, store: object, *, source: str) -> None:
    """The store's features must come from the CNN the checkpoint's head was trained on (ValueError otherwise).

    model_spec["store_cnn"] holds the training store's CNN_ATTRS (backbone, layer, weights and their sha256 or
    seed, preprocessing); `store` is a features.reader.FeatureStore.
    """
    expected = model_spec["store_cnn"]
    differing = {key: (value, store.attrs.get(key)) for key, value in expected.items() if store.attrs.get(key) != value}
    if differing:
        details = "; ".join(f"{key}: trained on {old!r}, store has {new!r}" for key, (old, new) in differing.items())
        raise ValueError(f"{store.path} was extracted with another CNN than the features {source} was trained on "
                         f"({details}); use a store extracted with the same backbone and weights")


def identity_to_save(identity: dict | None) -> dict | None:
    """A data identity as a checkpoint holds it: the uint64 digest arrays as int64 tensors (weights_only loads)."""
    if identity is None:
        return None
    return {**identity, **{key: torch.from_numpy(np.ascontiguousarray(identity[key]).view(np.int64))
                           for key in DIGEST_KEYS}}


def saved_identity(checkpoint: dict) -> dict | None:
    """The data identity a checkpoint (or exported model file) carries, digests as uint64 arrays; None when it
    has none (written before identities existed) or one of another IDENTITY_VERSION."""
    data = checkpoint.get("data")
    if not isinstance(data, dict) or data.get("version") != IDENTITY_VERSION:
        return None
    return {**data, **{key: data[key].cpu().numpy().view(np.uint64) for key in DIGEST_KEYS}}


def warn_unknown_identity(source: str, store: object) -> None:
    logger.warning("%s carries no identity of the data it was trained on (written by an older version): cannot "
                   "check that %s holds that data, nor count training images among the ones it scores", source,
                   store.path)


def check_same_data(checkpoint: dict, store: object, *, source: str, fix: str, fingerprint: str | None = None) -> str:
    """Refuse (ValueError) a store whose data is not the data `checkpoint` was trained on; return its fingerprint.

    Data = image paths, splits and captions (features.identity.store_fingerprint): a moved or copied store
    passes, another split of the same photos does not. A checkpoint without an identity passes with a warning.
    `fingerprint`: the store's, when the caller has it.
    """
    fingerprint = fingerprint or store_fingerprint(store)
    identity = saved_identity(checkpoint)
    if identity is None:
        warn_unknown_identity(source, store)
    elif identity["fingerprint"] != fingerprint:
        raise ValueError(f"{source} was trained on {identity['store']} (data {identity['fingerprint'][:8]}), "
                         f"{store.path} holds other data (data {fingerprint[:8]}: other image paths, splits or "
                         f"captions); {fix}")
    return fingerprint


def training_data_report(checkpoint: dict, store: object, *, splits: list[str], source: str,
                         fingerprint: str | None = None) -> dict:
    """Which store a model meets and how much of `splits` it was trained on; a WARNING log line when any.
    `fingerprint`: the store's, when the caller has it (features.identity.store_fingerprint).

    Returns {"store", "fingerprint", "identity": "checked" | "unknown", "same_data": bool | None,
    "trained_on": {"store", "fingerprint", "splits"} | None, "training_overlap": training_overlap's counts | None}.
    """
    fingerprint = fingerprint or store_fingerprint(store)
    identity = saved_identity(checkpoint)
    report = {"store": str(store.path), "fingerprint": fingerprint, "identity": "unknown", "same_data": None,
              "trained_on": None, "training_overlap": None}
    if identity is None:
        warn_unknown_identity(source, store)
        return report
    overlap = training_overlap(identity, store, splits)
    report.update(identity="checked", same_data=identity["fingerprint"] == fingerprint, training_overlap=overlap,
                  trained_on={key: identity[key] for key in ("store", "fingerprint", "splits")})
    if overlap["any"]:
        logger.warning("%s was trained on %d of the %d images (by path; %d by feature content) and %d of the "
                       "distinct caption texts of split(s) %s of %s: these scores are not held-out scores", source,
                       overlap["images_by_path"], overlap["images"], overlap["images_by_content"],
                       overlap["captions_by_text"], ",".join(splits), store.path)
    return report


def warn_about_data(checkpoint: dict, store: object, *, splits: list[str], source: str) -> dict:
    """training_data_report, plus a WARNING when the store holds other data than the training data (encode,
    search and serve embed any store on request; eval refuses other data without --cross-dataset)."""
    report = training_data_report(checkpoint, store, splits=splits, source=source)
    if report["same_data"] is False:
        logger.warning("%s was trained on %s (data %s), %s holds other data (data %s): cross-dataset embeddings",
                       source, report["trained_on"]["store"], report["trained_on"]["fingerprint"][:8], store.path,
                       report["fingerprint"][:8])
    return report
