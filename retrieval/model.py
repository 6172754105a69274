"""Load a train or finetune checkpoint, or an exported model file, into its model, vocabulary and config."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.choices import IMAGE_RESIZES
from extract.backbones import build_backbone
from retrieval.embeddings import EmbeddingsFile
from train.checkpoint import (
    CHECKPOINT_KINDS, HDF5_SIGNATURE, check_store_provenance, load_checkpoint, load_model_state,
)
from train.config import TrainConfig
from train.encode import encode_split
from train.finetune.cnn import attach_cnn
from train.finetune.config import FinetuneConfig
from train.finetune.data import encode_split_from_images
from train.model import VSEModel, build_model
from train.text import Vocabulary

logger = logging.getLogger(__name__)

# An exported model file (retrieval/export.py): the weights and what rebuilding the model needs, no training state.
MODEL_FILE_FORMAT = "vsepp-model"
MODEL_FILE_VERSION = 1
MODEL_FILE_KEYS = ("format", "format_version", "kind", "model", "loss", "vocab", "config", "model_spec", "source")


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

    @property
    def image_resize(self) -> str:
        """How this model's own CNN reads a raw image (extract.transforms.crop_image): "square" (the paper's
        256x256 resize, every model of this project), or "keep-aspect" (imported reference models)."""
        resize = self.checkpoint["model_spec"].get("image_resize", "square")
        if resize not in IMAGE_RESIZES:
            raise ValueError(f"the model file's image_resize {resize!r} is not one of {', '.join(IMAGE_RESIZES)}; "
                             "the file was not written by this code: import or export it again")
        return str(resize)


def model_from_checkpoint(checkpoint: dict, *, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the model of a loaded checkpoint dict, weights loaded strictly, in eval mode on `device`.

    A "train" checkpoint gives the head over precomputed features; a "finetune" one also carries its CNN,
    whose architecture comes from model_spec["backbone"] and whose weights are the checkpoint's (neither the
    store nor the original weight file is needed). Any other kind is a ValueError.
    """
    kind = checkpoint["kind"]
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"checkpoint kind {kind!r} is not one of {', '.join(CHECKPOINT_KINDS)}; this file was not "
                         "written by the train or finetune stage of this pipeline")
    config_cls = FinetuneConfig if kind == "finetune" else TrainConfig
    config = config_cls.from_dict(checkpoint["config"], source="the checkpoint's config")
    vocab = Vocabulary.from_dict(checkpoint["vocab"])
    spec = checkpoint["model_spec"]
    model = build_model(config, vocab_size=spec["vocab_size"], feature_dim=spec["feature_dim"])
    if kind == "finetune":
        attach_cnn(model, config, backbone=build_backbone(spec["backbone"], None))  # weights: the checkpoint's
    load_model_state(model, checkpoint["model"])
    return LoadedModel(model.to(device).eval(), vocab, config, kind, checkpoint)


def _exported_model(path: Path) -> dict | None:
    """The validated dict of an exported model file, or None when `path` is something else (a checkpoint)."""
    try:  # mmap: peeking at a 190 MB training checkpoint costs no copy
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip torch file: load_checkpoint gives the message
        return None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FILE_FORMAT:
        return None
    missing = [key for key in MODEL_FILE_KEYS if key not in payload]
    if missing:
        raise ValueError(f"{path}: exported model file without the keys {missing}; export it again")
    if payload["format_version"] != MODEL_FILE_VERSION:
        raise ValueError(f"{path}: exported model format {payload['format_version']} found, this code reads "
                         f"{MODEL_FILE_VERSION}; export it again from its checkpoint")
    return payload


def read_model_file(path: str | Path) -> dict:
    """A training checkpoint (last.pt / best.pt) or an exported model file, validated, tensors on the CPU.

    FileNotFoundError when missing, ValueError when it is neither (both formats hold kind, model, loss,
    vocab, config and model_spec; only a checkpoint holds optimizer, RNG states and counters).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; pass a best.pt / last.pt of a run or a file "
                                "written by `pipeline.py export`")
    _refuse_embeddings_file(path)
    return _exported_model(path) or load_checkpoint(path, map_location="cpu")


def _refuse_embeddings_file(path: Path) -> None:
    """ValueError naming what to pass when `path` is an embeddings file of `encode` (an HDF5 file of vectors)."""
    with open(path, "rb") as handle:
        if handle.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
            return
    try:
        with EmbeddingsFile(path) as embeddings:
            writer = embeddings.attrs.get("checkpoint") or "the run's best.pt"
    except (OSError, ValueError):
        return  # a feature store or other HDF5 file: load_checkpoint says what it is
    raise ValueError(f"{path} is an embeddings file of `encode` (vectors, not a model): pass the checkpoint that "
                     f"wrote it ({writer}) as --checkpoint, or search it with `search --embeddings {path}`")


def load_model(path: str | Path, *, device: torch.device | str = "cpu") -> LoadedModel:
    """model_from_checkpoint of the checkpoint or exported model at `path` (FileNotFoundError / ValueError)."""
    checkpoint = read_model_file(path)
    origin = checkpoint.get("source", checkpoint)  # an exported file keeps its checkpoint's counters in "source"
    logger.info("loaded %s (%s %s, epoch %s, step %s, best rsum %.2f)", path, checkpoint["kind"],
                "exported model" if "source" in checkpoint else "checkpoint", origin.get("epoch"),
                origin.get("step"), float(origin.get("best_rsum", float("nan"))))
    return model_from_checkpoint(checkpoint, device=device)


def weights_sha256(module: nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes and bytes, in key order): equal for a checkpoint and
    its export, different for any other weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d counters (BatchNorm) too
    return digest.hexdigest()


def encode_store_split(loaded: LoadedModel, store: object, *, split: str, image_root: str | Path = "",
                       batch_size: int, workers: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """(image_emb [N, E], caption_emb [M, E], caption_image_index [M] in 0..N-1, image_rows [N]) of a split.

    Train-stage models read the stored CNN features (their feature mode); fine-tuned ones re-encode the raw
    images with their own CNN (center crop), since the stored features no longer describe it; they are read
    under image_root, else the fine-tune run's, else the store's image_root attribute. Eval, encode and search
    all embed splits here, so their embeddings are the same numbers.
    """
    splits: Sequence[str] = [split]
    if not loaded.has_cnn:  # stored features: they must come from the CNN the head was trained on
        check_store_provenance(loaded.checkpoint["model_spec"], store, source="the checkpoint")
        return encode_split(loaded.model, store, splits=splits, feature_mode=loaded.config.feature_mode,
                            vocab=loaded.vocab, batch_size=batch_size, device=device)
    image_root = image_root or loaded.config.image_root or store.attrs["image_root"]
    return encode_split_from_images(loaded.model, store, splits=splits, vocab=loaded.vocab, image_root=image_root,
                                    batch_size=batch_size, workers=workers, device=device,
                                    resize=loaded.image_resize)
