"""Backbones: layer, feature size, seeded random init, eval-mode determinism, CPU autocast path."""
from __future__ import annotations

import pytest
import torch

from extract.backbones import build_backbone
from extract.run import embed_crops


@pytest.mark.slow  # a vgg19 forward
def test_vgg19_fc7_after_relu() -> None:
    backbone = build_backbone("vgg19", seed=0)
    assert backbone.feature_dim == 4096 and backbone.layer_name == "fc7"
    assert [type(m).__name__ for m in backbone.net.classifier] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU"]
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        first, second = backbone(images), backbone(images)
    assert first.shape == (1, 4096) and (first >= 0).all()
    assert torch.equal(first, second)  # eval mode: dropout is the identity


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet50", 2048)])
def test_resnet_pooled_features(name: str, dim: int) -> None:
    backbone = build_backbone(name, seed=0)
    assert backbone.feature_dim == dim and backbone.layer_name == "avgpool"
    assert isinstance(backbone.net.fc, torch.nn.Identity) and not backbone.training
    assert all(parameter.requires_grad for parameter in backbone.parameters())  # finetune can unfreeze


def test_random_init_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = build_backbone("resnet18", seed=3).state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    second = build_backbone("resnet18", seed=3).state_dict()
    other = build_backbone("resnet18", seed=4).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["net.conv1.weight"], other["net.conv1.weight"])


def test_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'alexnet'"):
        build_backbone("alexnet")


def test_embed_crops_channels_last_and_bf16_autocast_on_cpu() -> None:
    backbone = build_backbone("resnet18", seed=0)
    crops = torch.randint(0, 256, (1, 2, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    plain = embed_crops(backbone, crops, device=torch.device("cpu"))
    assert plain.shape == (1, 2, 512) and plain.dtype == torch.float32
    backbone_cl = backbone.to(memory_format=torch.channels_last)
    fast = embed_crops(backbone_cl, crops, device=torch.device("cpu"), channels_last=True)
    torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-4)
    half = embed_crops(backbone_cl, crops, device=torch.device("cpu"), amp="bf16", channels_last=True)
    assert half.dtype == torch.float32
    relative = (half - plain).norm() / plain.norm()
    assert 0 < relative < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg19", "resnet152", "resnet50", "resnet18"])
def test_the_backbone_table_agrees_with_torchvision(name: str) -> None:
    from torchvision import models
    from torchvision.models import get_model_weights

    from extract.backbones import BACKBONES

    spec = BACKBONES[name]
    assert spec.weights_file == get_model_weights(name).DEFAULT.url.rsplit("/", 1)[-1]
    with torch.device("meta"):  # structure only
        net = getattr(models, name)(weights=None)
    spec.cut(net)
    stages = spec.stages(net)
    images = torch.empty(2, 3, 224, 224, device="meta")
    for _, stage in stages:  # the stages, in order, compute the stored layer
        images = stage(images)
    assert tuple(images.shape) == (2, spec.feature_dim) == tuple(net(torch.empty(2, 3, 224, 224, device="meta")).shape)
    staged = [id(p) for _, stage in stages for p in stage.parameters()]
    assert sorted(staged) == sorted(id(p) for p in net.parameters()) and len(set(staged)) == len(staged)
