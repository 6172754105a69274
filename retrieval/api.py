"""The Python API: VSE.load(checkpoint) embeds sentences, images and store splits into the joint space."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from common.device import resolve_device
from extract.weights import sha256_of_file
from features.reader import FeatureStore
from features.schema import CNN_ATTRS
from retrieval.images import ImageInput, crop_batches
from retrieval.model import LoadedModel, encode_store_split, load_model, weights_sha256
from train.checkpoint import check_store_provenance, warn_about_data
from train.encode import encode_token_lists
from train.finetune.cnn import CNNBackbone, backbone_from_store
from train.losses.similarity import similarity_function
from train.text import BASIC, tokenize

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256  # eval's: the same batches give the same float rounding, hence the same ranks


@dataclass
class SplitEmbeddings:
    """A store split as the model sees it: images and captions in store order, and how they pair."""

    image_emb: torch.Tensor  # [N, E] float32
    caption_emb: torch.Tensor  # [M, E] float32
    caption_image_index: np.ndarray  # int64 [M]: caption -> row of image_emb
    image_rows: np.ndarray  # int64 [N]: store image rows
    caption_rows: np.ndarray  # int64 [M]: store caption rows
    image_paths: list[str]  # [N] relative to the store's image root
    caption_texts: list[str]  # [M]


class VSE:
    """A trained VSE++ model for new inputs: sentences, images and store splits -> embeddings [N, E].

    Load with VSE.load(path) (a train or finetune checkpoint, or a file of `pipeline.py export`). Every encode
    runs batched, in eval mode, without gradients, and returns float32 CPU tensors as the model makes them
    (L2-normalised unless the run was trained with --no-image-norm). Images go through extract's 1C
    preprocessing (256x256 resize, center 224 crop); a fine-tuned model carries its CNN, a train-stage
    model uses the CNN its feature store was extracted with, rebuilt from the store's attributes.
    """

    def __init__(self, loaded: LoadedModel, *, path: str | Path, device: torch.device, store: str | Path | None = None,
                 weights: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE, workers: int = 0) -> None:
        if batch_size < 1 or workers < 0:
            raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size}, {workers}")
        self.loaded, self.path, self.device = loaded, Path(path), device
        self.store = str(store or loaded.config.store)
        self.weights = weights or getattr(loaded.config, "weights", "") or ""
        self.batch_size, self.workers = batch_size, workers

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", store: str | Path | None = None,
             weights: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE, workers: int = 0) -> "VSE":
        """The model of a checkpoint or exported file. `store` (default: the one it was trained on) gives a
        train-stage model its CNN and the splits of encode_split; `weights` is the CNN's weight file when it is
        not in the torch hub cache (its sha256 must be the store's)."""
        resolved = resolve_device(device)
        return cls(load_model(path, device=resolved), path=path, device=resolved, store=store, weights=weights,
                   batch_size=batch_size, workers=workers)

    @property
    def kind(self) -> str:
        """"train" (a head over stored CNN features) or "finetune" (the model carries its CNN)."""
        return self.loaded.kind

    @property
    def config(self):
        """The run's TrainConfig (a FinetuneConfig for a fine-tuned model)."""
        return self.loaded.config

    @property
    def similarity_name(self) -> str:
        """"cosine" (an inner product of the embeddings) or "order" (-||max(0, c - i)||, asymmetric)."""
        return self.loaded.config.similarity

    @property
    def embed_dim(self) -> int:
        """E, the size of the joint space."""
        return int(self.loaded.config.embed_dim)

    def similarity(self, image_emb: torch.Tensor, caption_emb: torch.Tensor) -> torch.Tensor:
        """sims [N, M] = s(image i, caption c) with the similarity the model was trained with."""
        return similarity_function(self.similarity_name)(image_emb, caption_emb)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Sentences -> caption_emb [N, E]; an empty sentence (no word) is a ValueError naming it."""
        token_lists = text_tokens(texts, tokenizer=self.loaded.vocab.tokenizer)
        known = sum(token in self.loaded.vocab for tokens in token_lists for token in tokens)
        total = sum(len(tokens) for tokens in token_lists)
        if known < total:
            logger.info("%d of %d words are not in the model's vocabulary (read as <unk>)", total - known, total)
        return encode_token_lists(self.loaded.model, token_lists, vocab=self.loaded.vocab,
                                  batch_size=self.batch_size, device=self.device)

    @torch.no_grad()
    def encode_images(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Image files or PIL images -> image_emb [N, E] (center crop of the 256x256 resize, as extract's 1C; of
        the aspect-keeping resize for an imported reference model: LoadedModel.image_resize).

        A missing file is a FileNotFoundError, a file that is not an image a ValueError naming it.
        """
        if isinstance(images, (str, Path)) or not len(images):
            raise ValueError("encode_images takes a non-empty list of image paths or PIL images")
        chunks = [self.encode_crops(crops)
                  for crops in crop_batches(images, batch_size=self.batch_size, workers=self.workers,
                                            resize=self.loaded.image_resize)]
        return torch.cat(chunks)

    @torch.no_grad()
    def encode_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 crops [B, 3, 224, 224] (RGB, 0..255, unnormalised) -> image_emb [B, E]."""
        crops = crops.to(self.device)
        if self.loaded.has_cnn:
            return self.loaded.model.encode_images(crops).float().cpu()
        return self.loaded.model.encode_images(self.cnn(crops)).float().cpu()

    @cached_property
    def cnn(self) -> CNNBackbone:
        """The CNN in front of the head: the model's own (finetune) or the store's, rebuilt (train)."""
        if self.loaded.has_cnn:
            return self.loaded.model.image_encoder.backbone
        if self.loaded.config.feature_mode == "regions":
            raise ValueError(f"{self.path} embeds region features (a detector's vectors per image, from a region "
                             "store): no CNN turns a new image into them here; query by text, or search the store's "
                             "own images")
        store_path = Path(self.store)
        if not store_path.is_file():
            raise FileNotFoundError(f"images need the CNN of the feature store {self.store!r} this train-stage model "
                                    "was trained on, which is missing; pass store=PATH (--store) of a store "
                                    "extracted with the same CNN, or use a fine-tuned model")
        with FeatureStore(store_path) as store:
            check_store_provenance(self.loaded.checkpoint["model_spec"], store, source=str(self.path))
            attrs = dict(store.attrs)
        backbone = backbone_from_store(attrs, store_path=store_path, weights=self.weights,
                                       feature_dim=self.loaded.checkpoint["model_spec"]["feature_dim"])
        return CNNBackbone(backbone).to(self.device).eval()

    def cnn_provenance(self) -> dict:
        """Which CNN embeds images: the checkpoint's own, or the store's backbone and weights (built here, so a
        missing weight file fails now)."""
        if self.loaded.has_cnn:
            return {"source": "checkpoint", "backbone": self.loaded.checkpoint["model_spec"].get("backbone")}
        _ = self.cnn
        with FeatureStore(self.store) as store:
            return {"source": "store", "store": self.store, **{key: store.attrs.get(key) for key in CNN_ATTRS}}

    def encode_split(self, split: str = "test", *, store: str | Path | None = None,
                     image_root: str | Path | None = None) -> SplitEmbeddings:
        """Every done image of a store split and its captions, embedded exactly as eval embeds them."""
        with FeatureStore(store or self.store) as opened:
            warn_about_data(self.loaded.checkpoint, opened, splits=[split], source=str(self.path))
            image_emb, caption_emb, caption_image_index, image_rows = encode_store_split(
                self.loaded, opened, split=split, image_root=image_root or "", batch_size=self.batch_size,
                workers=self.workers, device=self.device)
            caption_rows = opened.caption_indices([split])
            texts = opened.caption_texts
            return SplitEmbeddings(image_emb, caption_emb, caption_image_index, image_rows, caption_rows,
                                   [str(opened.image_paths[row]) for row in image_rows],
                                   [texts[row] for row in caption_rows])

    @cached_property
    def model_sha256(self) -> str:
        """sha256 of the model's weights: the same for a checkpoint and its export (embeddings files record it)."""
        return weights_sha256(self.loaded.model)

    def provenance(self) -> dict:
        """What made an embedding: checkpoint path and sha256, weights fingerprint, kind, similarity, config."""
        return {"checkpoint": str(self.path), "checkpoint_sha256": sha256_of_file(self.path),
                "model_sha256": self.model_sha256, "kind": self.kind, "similarity": self.similarity_name,
                "embed_dim": self.embed_dim, "config": self.config.to_dict(),
                "model_spec": dict(self.loaded.checkpoint["model_spec"])}


def text_tokens(texts: Sequence[str], *, tokenizer: str = BASIC) -> list[list[str]]:
    """Tokens of each sentence (train.text.tokenize with the model vocabulary's `tokenizer`); ValueError for a
    non-string or a sentence with no word."""
    if isinstance(texts, str) or not len(texts):
        raise ValueError("give a non-empty list of sentences, e.g. ['a dog runs on the beach']")
    token_lists = []
    for number, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"sentence {number} is a {type(text).__name__}, not a string")
        tokens = tokenize(text, tokenizer)
        if not tokens:
            raise ValueError(f"sentence {number} ({text!r}) is empty: a query needs at least one word")
        token_lists.append(tokens)
    return token_lists
