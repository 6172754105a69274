"""CNN backbones that map a batch of 224x224 crops to one feature vector each (VGG19 FC7, ResNet pool)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models

from extract.config import BACKBONES
from extract.weights import load_state_dict_strict

_LAYERS = {  # name of the layer whose output is stored
    "vgg19": "fc7",  # classifier[:5] = fc6, ReLU, Dropout, fc7, ReLU
    "resnet152": "avgpool",
    "resnet50": "avgpool",
    "resnet18": "avgpool",
}


class FeatureBackbone(nn.Module):
    """A torchvision classifier cut below its last layer: images [B, 3, 224, 224] -> features [B, D].

    ``net`` is the plain torchvision module (all its parameters trainable), so the fine-tune stage can
    reuse it and unfreeze what it wants. Call ``eval()`` for extraction: VGG19's dropout (between fc6
    and fc7) is then the identity and features are deterministic.
    """

    def __init__(self, net: nn.Module, *, name: str, feature_dim: int, layer_name: str) -> None:
        super().__init__()
        self.net = net
        self.name = name
        self.feature_dim = feature_dim
        self.layer_name = layer_name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] normalised -> features [B, feature_dim]."""
        return self.net(images)


def build_backbone(name: str, weights_path: str | Path | None = None, *, seed: int = 0) -> FeatureBackbone:
    """Build ``name`` from torchvision with ``weights=None``, load ``weights_path`` strictly, cut the head.

    With ``weights_path=None`` the weights are torchvision's random init drawn under ``seed`` (the
    global RNG is left untouched), so random-init features are reproducible. Weights are loaded into
    the full classifier before cutting, so standard torchvision files fit. Returned in eval mode.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = getattr(models, name)(weights=None)
    if weights_path is not None:
        load_state_dict_strict(net, weights_path)
    if name == "vgg19":
        net.classifier = net.classifier[:5]  # up to and including the ReLU after fc7 (4096-d)
        feature_dim = net.classifier[3].out_features
    else:
        feature_dim = net.fc.in_features  # 2048, or 512 for resnet18
        net.fc = nn.Identity()  # output = global average pool, flattened
    return FeatureBackbone(net, name=name, feature_dim=feature_dim, layer_name=_LAYERS[name]).eval()
