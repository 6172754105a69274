"""VSE model: GRU caption encoder, image head over precomputed features, both L2-normalised.

The model returns embeddings only; losses live in train/losses/ and the loop in train/trainer.py.
Image side = ImageEncoder(head, backbone=None): train uses precomputed features (no backbone);
finetune puts a CNN in front of the *same* ImageHead with `ImageEncoder.set_backbone`, so a train
checkpoint's head weights load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from common.choices import IMAGE_POOLS, TEXT_POOLS
from train import pooling
from train.gru import PackedGRU
from train.config import TrainConfig

WORD_INIT_RANGE = 0.1  # reference: word embeddings uniform in [-0.1, 0.1]


def xavier_linear(in_features: int, out_features: int) -> nn.Linear:
    """Linear layer with the reference's Xavier init: uniform(+-sqrt(6)/sqrt(in+out)), bias 0."""
    layer = nn.Linear(in_features, out_features)
    bound = math.sqrt(6.0) / math.sqrt(in_features + out_features)
    nn.init.uniform_(layer.weight, -bound, bound)
    nn.init.zeros_(layer.bias)
    return layer


def _set_pool(kind: str, dim: int, choices: tuple[str, ...], what: str) -> nn.Module | None:
    if kind not in choices:
        raise ValueError(f"unknown {what} {kind!r}; valid: {', '.join(choices)}")
    if kind == "adaptive":
        return pooling.AdaptivePooling(dim)
    if kind == "gpo":
        return pooling.GPO(dim)
    return None


class TextEncoder(nn.Module):
    """Token ids [B, T] + lengths [B] -> L2-normalised caption embeddings [B, E].

    Embedding(vocab, word_dim) -> GRU(word_dim, E, 1 layer) over each caption's true tokens (train/gru.py:
    nn.GRU's math, its own faster backward on the CPU, cuDNN on CUDA) -> pooling of the GRU states: "last" =
    state at each caption's true last token (the paper), "mean", "adaptive", "gpo" -> optional linear caption
    head -> L2 norm.
    """

    def __init__(self, vocab_size: int, *, word_dim: int, embed_dim: int, text_pool: str = "last",
                 caption_head: bool = False) -> None:
        super().__init__()
        self.text_pool = text_pool
        self.pool = _set_pool(text_pool, embed_dim, TEXT_POOLS, "text pool")
        self.embed = nn.Embedding(vocab_size, word_dim)
        nn.init.uniform_(self.embed.weight, -WORD_INIT_RANGE, WORD_INIT_RANGE)
        self.gru = PackedGRU(word_dim, embed_dim)
        self.head = xavier_linear(embed_dim, embed_dim) if caption_head else None

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens int64 [B, T] (0-padded), lengths [B] (>= 1) -> [B, E]."""
        states, last_state = self.gru(self.embed(tokens), lengths)  # [B, T, E] (0 past each length), [B, E]
        if self.text_pool == "last":
            pooled = last_state
        else:
            lengths_dev = lengths.to(states.device)
            pooled = pooling.masked_mean(states, lengths_dev) if self.pool is None else self.pool(states, lengths_dev)
        if self.head is not None:
            pooled = self.head(pooled)
        return F.normalize(pooled, dim=-1)


class ImageHead(nn.Module):
    """Image features [B, D] or a set [B, K, D] (ten crops or K regions) -> image embeddings [B, E].

    Each feature vector is projected by Linear(D, E) (Xavier init); a set is then pooled over K by
    image_pool ("mean", "adaptive" of Zhang et al., or "gpo" of VSE-infinity, which pools the projected
    regions the same way); then L2 norm when image_norm. Projecting then mean-pooling equals mean-pooling
    then projecting (linear), so "10c" and "10c-set"+"mean" agree. `lengths` [B] gives each set's size
    after a region drop (its vectors packed at the front); None means every set is whole. With feature_norm,
    each feature vector is first L2-normalised (the reference code's full-image encoder: l2norm(cnn(x)) -> fc).
    """

    def __init__(self, feature_dim: int, *, embed_dim: int, image_pool: str = "mean",
                 image_norm: bool = True, feature_norm: bool = False) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.fc = xavier_linear(feature_dim, embed_dim)
        self.pool = _set_pool(image_pool, embed_dim, IMAGE_POOLS, "image pool")
        self.image_norm, self.feature_norm = image_norm, feature_norm

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """[B, D] or [B, K, D] float (with optional set sizes lengths [B]) -> [B, E]."""
        if features.shape[-1] != self.feature_dim or features.dim() not in (2, 3):
            raise ValueError(f"image features of shape {tuple(features.shape)} do not fit this head "
                             f"([B, {self.feature_dim}] or [B, K, {self.feature_dim}])")
        if lengths is not None and features.dim() != 3:
            raise ValueError(f"set sizes were given for image features of shape {tuple(features.shape)}, not a set")
        projected = self.fc(F.normalize(features, dim=-1) if self.feature_norm else features)
        if projected.dim() == 3:  # [B, K, E] -> [B, E]
            projected = self._pool_set(projected, lengths)
        return F.normalize(projected, dim=-1) if self.image_norm else projected

    def _pool_set(self, projected: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if lengths is None:  # whole sets: the plain mean (what "10c" computes), no mask to build
            if self.pool is None:
                return projected.mean(dim=1)
            lengths = torch.full((projected.shape[0],), projected.shape[1], dtype=torch.int64)
        return pooling.masked_mean(projected, lengths) if self.pool is None else self.pool(projected, lengths)


class ImageEncoder(nn.Module):
    """Optional backbone (a CNN for finetune: images -> [B, D]) followed by an ImageHead."""

    def __init__(self, head: ImageHead, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.head = head
        self.backbone = backbone

    def set_backbone(self, backbone: nn.Module | None) -> None:
        """Put a CNN (returning [B, D], D = head.feature_dim) in front of the head, or remove it."""
        self.backbone = backbone

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Precomputed features (no backbone; a set may come with its sizes) or images (with a backbone) -> [B, E]."""
        features = inputs if self.backbone is None else self.backbone(inputs)
        return self.head(features, lengths)


class VSEModel(nn.Module):
    """Image and caption encoders into one joint space; returns embeddings, never a loss."""

    def __init__(self, image_encoder: ImageEncoder, text_encoder: TextEncoder, *,
                 abs_embeddings: bool = False) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.abs_embeddings = abs_embeddings

    def encode_images(self, images: torch.Tensor, image_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Features [B, D] / [B, K, D] with optional set sizes [B] (or images, with a backbone) -> image_emb [B, E]."""
        image_emb = self.image_encoder(images, image_lengths)
        return image_emb.abs() if self.abs_embeddings else image_emb

    def encode_captions(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] and lengths [B] -> caption_emb [B, E]."""
        caption_emb = self.text_encoder(tokens, lengths)
        return caption_emb.abs() if self.abs_embeddings else caption_emb

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                image_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (image_emb [B, E], caption_emb [B, E]); image_lengths [B]: the sizes of image sets after a drop."""
        return self.encode_images(images, image_lengths), self.encode_captions(tokens, lengths)


def build_model(config: TrainConfig, *, vocab_size: int, feature_dim: int) -> VSEModel:
    """The VSE model of `config` for precomputed features of size `feature_dim` (no backbone)."""
    head = ImageHead(feature_dim, embed_dim=config.embed_dim, image_pool=config.image_pool,
                     image_norm=config.image_norm, feature_norm=config.feature_norm)
    text = TextEncoder(vocab_size, word_dim=config.word_dim, embed_dim=config.embed_dim,
                       text_pool=config.text_pool, caption_head=config.caption_head)
    return VSEModel(ImageEncoder(head), text, abs_embeddings=config.abs_embeddings)
