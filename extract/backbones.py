"""The backbone table: each CNN declared once (feature layer and size, weight file, fine-tune stages), and its builder.

Like timm's `register_model` + `group_matcher`: everything that differs between backbones lives in one
BackboneSpec here; extraction, the store's attributes, weight lookup and fine-tuning read it from BACKBONES.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models


logger = logging.getLogger(__name__)

Stages = list[tuple[str, nn.Module]]


@dataclass(frozen=True)
class BackboneSpec:
    """How one torchvision classifier becomes a feature extractor and a fine-tunable image encoder."""

    name: str  # torchvision model builder name
    layer: str  # the stored layer (store attribute "layer")
    feature_dim: int  # size of that layer's output
    weights_file: str  # torchvision's DEFAULT ImageNet weights file, looked up in the torch hub cache
    cut: Callable[[nn.Module], None]  # replaces the classifier so that net(images) is the stored layer
    stages: Callable[[nn.Module], Stages]  # the cut net as consecutive fine-tune stages, input first


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add `spec` to BACKBONES (a name is declared once)."""
    if spec.name in BACKBONES:
        raise ValueError(f"backbone {spec.name!r} is declared twice")
    BACKBONES[spec.name] = spec
    return spec


def _cut_resnet(net: nn.Module) -> None:
    net.fc = nn.Identity()  # the output is the global average pool, flattened


def _resnet_stages(net: nn.Module) -> Stages:
    """stem (conv1, bn1, relu, maxpool), layer1, layer2, layer3, layer4 (+ global pool, flatten)."""
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    last = nn.Sequential(net.layer4, net.avgpool, nn.Flatten(1))
    return [("stem", stem), ("layer1", net.layer1), ("layer2", net.layer2), ("layer3", net.layer3),
            ("layer4", last)]


def _cut_vgg(net: nn.Module) -> None:
    net.classifier = net.classifier[:5]  # fc6, ReLU, Dropout, fc7, ReLU: FC7 after its ReLU (4096-d)


def _vgg_stages(net: nn.Module) -> Stages:
    """block1..block5 (conv blocks, each ending with its max pool), fc6 (pool, flatten, Linear, ReLU), fc7."""
    stages, block = [], []
    for module in net.features:
        block.append(module)
        if isinstance(module, nn.MaxPool2d):
            stages.append((f"block{len(stages) + 1}", nn.Sequential(*block)))
            block = []
    fc6 = nn.Sequential(net.avgpool, nn.Flatten(1), net.classifier[0], net.classifier[1])
    fc7 = nn.Sequential(*net.classifier[2:5])  # dropout, fc7, ReLU
    return stages + [("fc6", fc6), ("fc7", fc7)]


register_backbone(BackboneSpec("vgg19", "fc7", 4096, "vgg19-dcbb9e9d.pth", _cut_vgg, _vgg_stages))
register_backbone(BackboneSpec("resnet152", "avgpool", 2048, "resnet152-f82ba261.pth", _cut_resnet, _resnet_stages))
register_backbone(BackboneSpec("resnet50", "avgpool", 2048, "resnet50-11ad3fa6.pth", _cut_resnet, _resnet_stages))
register_backbone(BackboneSpec("resnet18", "avgpool", 512, "resnet18-f37072fd.pth", _cut_resnet, _resnet_stages))


def backbone_spec(name: str) -> BackboneSpec:
    """The table entry of `name`; ValueError naming the declared backbones otherwise."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


class FeatureBackbone(nn.Module):
    """A torchvision classifier cut below its last layer: images [B, 3, 224, 224] -> features [B, D].

    ``net`` is the plain torchvision module (all its parameters trainable), so the fine-tune stage can
    reuse it and unfreeze what it wants. Call ``eval()`` for extraction: VGG19's dropout (between fc6
    and fc7) is then the identity and features are deterministic.
    """

    def __init__(self, net: nn.Module, *, spec: BackboneSpec) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.name, self.feature_dim, self.layer_name = spec.name, spec.feature_dim, spec.layer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] normalised -> features [B, feature_dim]."""
        return self.net(images)

    def stages(self) -> Stages:
        """The net as consecutive stages whose composition equals forward (modules shared, not copied)."""
        return self.spec.stages(self.net)


def build_backbone(name: str, weights_path: str | Path | None = None, *, seed: int = 0) -> FeatureBackbone:
    """Build ``name`` from torchvision with ``weights=None``, load ``weights_path`` strictly, cut the head.

    With ``weights_path=None`` the weights are torchvision's random init drawn under ``seed`` (the
    global RNG is left untouched), so random-init features are reproducible. Weights are loaded into
    the full classifier before cutting, so standard torchvision files fit. Returned in eval mode.
    """
    spec = backbone_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = getattr(models, name)(weights=None)
    if weights_path is not None:
        load_state_dict_strict(net, weights_path)
    spec.cut(net)
    return FeatureBackbone(net, spec=spec).eval()


def load_state_dict_strict(model: nn.Module, path: str | Path) -> None:
    """Load a state_dict file into ``model``; every key must match in name and shape.

    Raises ValueError listing missing / unexpected keys or shape mismatches (no key is ever dropped).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as err:  # torch raises many types for a foreign, corrupt or code-holding file
        raise ValueError(f"weights file {str(path)!r} cannot be read as a state_dict of tensors "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); pass a file saved with "
                         "torch.save(model.state_dict(), path)") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = list(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{str(path)!r} is not a plain state_dict of tensors (top level: {keys}); "
                         f"save one with torch.save(model.state_dict(), path)")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise ValueError(f"weights file {str(path)!r} does not fit {type(model).__name__}: "
                         f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                         f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}, "
                         f"shape mismatches {mismatched[:4]}; pass weights saved from the same architecture")
    model.load_state_dict(state, strict=True)
    logger.info("loaded weights %s", path)
