"""Unit tests of the finetune pieces: CNN stages, freezing, BatchNorm, checkpointing, crop boxes, weights, config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from extract.backbones import BACKBONES, build_backbone
from extract.config import config_json_path
from extract.transforms import normalize
from train.config import TrainConfig
from train.finetune.cnn import BATCH_NORM_TYPES, CNNBackbone, backbone_from_store
from train.finetune.config import CHECKPOINT_FIELDS, FinetuneConfig, parse_unfreeze
from train.finetune.data import crop_generator, paper_crop_box, random_crop, resized_crop_box
from train.finetune.run import param_groups, resolve_config
from train.losses import build_loss
from train.model import ImageHead, build_model

from tests.train.finetune.fixtures import single_thread  # noqa: F401  (autouse)

SMALL = 64  # the CNNs accept any input >= 32 px; small inputs keep these tests fast


def _crops(count: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, SMALL, SMALL), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def resnet18_backbone():
    """A factory of fresh seeded resnet18 FeatureBackbones (the init is the slow part; copies are cheap)."""
    template = build_backbone("resnet18", None, seed=0)
    state = {key: value.clone() for key, value in template.state_dict().items()}

    def make():
        backbone = build_backbone("resnet18", None, seed=0)
        backbone.load_state_dict(state)
        return backbone
    return make


@pytest.mark.slow
def test_stages_compose_to_the_extraction_forward(resnet18_backbone):
    backbone = resnet18_backbone()
    cnn = CNNBackbone(resnet18_backbone(), channels_last=False).eval()
    crops = _crops()
    with torch.no_grad():
        expected = backbone.eval()(normalize(crops))
        assert torch.allclose(cnn(crops), expected, atol=1e-5)
    assert cnn.stage_names == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert set(cnn.state_dict()) == set(backbone.state_dict())  # the keys of extract's FeatureBackbone


def test_vgg19_stages_cover_every_parameter_once():
    with torch.device("meta"):  # structure only: no 140M-parameter init
        net = torchvision.models.vgg19()
    BACKBONES["vgg19"].cut(net)
    stages = BACKBONES["vgg19"].stages(net)
    assert [name for name, _ in stages] == ["block1", "block2", "block3", "block4", "block5", "fc6", "fc7"]
    staged = [id(p) for _, stage in stages for p in stage.parameters()]
    assert sorted(staged) == sorted(id(p) for p in net.parameters()) and len(set(staged)) == len(staged)


def test_gradients_reach_only_the_unfrozen_stage(resnet18_backbone):
    head = ImageHead(512, embed_dim=8)
    cnn = CNNBackbone(resnet18_backbone())
    cnn.unfreeze_backbone(1)
    cnn.train()
    head(cnn(_crops())).sum().backward()
    for name, parameter in cnn.net.named_parameters():
        trainable = name.startswith("layer4.") and ".bn" not in name and "downsample.1" not in name
        assert parameter.requires_grad == trainable, name
        if trainable:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    assert head.fc.weight.grad is not None


def test_optimizer_groups_hold_trainable_parameters_only(resnet18_backbone):
    config = FinetuneConfig(embed_dim=8, word_dim=4, lr=1e-3, cnn_lr=1e-5, loss="infonce")
    model, loss = build_model(config, vocab_size=10, feature_dim=512), build_loss(config)
    cnn = CNNBackbone(resnet18_backbone())
    model.image_encoder.set_backbone(cnn)
    cnn.unfreeze_backbone(2)
    groups = param_groups(model, loss, cnn, config)
    assert [group["lr"] for group in groups] == [1e-3, 1e-5]
    expected_cnn = [p for name, p in cnn.net.named_parameters() if name.split(".")[0] in ("layer3", "layer4")
                    and p.requires_grad]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in expected_cnn}
    assert all(p.requires_grad for group in groups for p in group["params"])
    assert len(groups[0]["params"]) == len([p for p in model.parameters() if p.requires_grad]) - len(expected_cnn) + 1
    assert any(p is loss.logit_scale for p in groups[0]["params"])  # the loss's temperature, at the head's lr
    cnn.freeze_backbone()
    assert [group["lr"] for group in param_groups(model, loss, cnn, config)] == [1e-3]


@pytest.mark.parametrize("train_bn", [False, True])
def test_batchnorm_statistics_frozen_unless_train_bn(resnet18_backbone, train_bn: bool):
    cnn = CNNBackbone(resnet18_backbone(), train_bn=train_bn)
    cnn.unfreeze_backbone(None)
    before = {name: buffer.clone() for name, buffer in cnn.net.named_buffers() if "running" in name}
    cnn.train()  # the Trainer calls model.train() before every step
    cnn(_crops()).sum().backward()
    changed = [name for name, buffer in cnn.net.named_buffers() if "running" in name
               and not torch.equal(buffer, before[name])]
    if train_bn:
        assert len(changed) == len(before)
    else:
        assert changed == []
    bn_modules = [m for m in cnn.net.modules() if isinstance(m, BATCH_NORM_TYPES)]
    assert all(m.training == train_bn for m in bn_modules)
    assert all(p.requires_grad == train_bn for m in bn_modules for p in m.parameters())


def test_frozen_stages_stay_in_eval_mode(resnet18_backbone):
    cnn = CNNBackbone(resnet18_backbone(), train_bn=True)
    cnn.unfreeze_backbone(1)
    cnn.train()
    assert not cnn.net.layer3.training and not cnn.net.bn1.training and cnn.net.layer4.training
    cnn.eval()
    assert not any(module.training for module in cnn.modules())


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_gradients(resnet18_backbone):
    grads = []
    for checkpointing in (False, True):
        cnn = CNNBackbone(resnet18_backbone(), grad_checkpointing=checkpointing)
        cnn.unfreeze_backbone(2)
        cnn.train()
        cnn(_crops()).pow(2).sum().backward()
        grads.append([p.grad for p in cnn.parameters() if p.requires_grad])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads))
    with pytest.raises(ValueError, match="grad-checkpointing"):
        CNNBackbone(resnet18_backbone(), grad_checkpointing=True, train_bn=True)


def test_unfreeze_values_are_checked(resnet18_backbone):
    assert parse_unfreeze("all") is None and parse_unfreeze("3") == 3 and parse_unfreeze(0) == 0
    for bad in ("-1", "last", "1.5"):
        with pytest.raises(ValueError, match="--unfreeze"):
            parse_unfreeze(bad)
    with pytest.raises(ValueError, match=r"outside \[0, 5\]"):
        CNNBackbone(resnet18_backbone()).unfreeze_backbone(6)


def test_paper_crop_boxes_stay_inside_and_differ_between_epochs():
    boxes = [paper_crop_box(crop_generator(0, epoch, 3, 1)) for epoch in range(50)]
    assert all(0 <= top <= 32 and 0 <= left <= 32 and (h, w) == (224, 224) for top, left, h, w in boxes)
    assert len(set(boxes)) > 25  # 33 x 33 possible boxes
    assert paper_crop_box(crop_generator(0, 7, 3, 1)) == boxes[7]  # reproducible from (seed, epoch, step, position)
    by_position = {paper_crop_box(crop_generator(0, 7, 3, position)) for position in range(20)}
    by_seed = {paper_crop_box(crop_generator(seed, 7, 3, 1)) for seed in range(20)}
    assert len(by_position) >= 15 and len(by_seed) >= 15  # each caption of a batch, each seed: its own stream


@pytest.mark.parametrize("height,width", [(256, 256), (30, 400), (500, 20), (224, 300), (1, 1)])
def test_resized_crop_boxes_stay_inside_the_image(height: int, width: int):
    boxes = [resized_crop_box(crop_generator(0, epoch, 0, 0), height=height, width=width) for epoch in range(200)]
    for top, left, box_height, box_width in boxes:
        assert 0 <= top and 0 <= left and box_height >= 1 and box_width >= 1
        assert top + box_height <= height and left + box_width <= width
    if 0.5 < height / width < 2 and height * width > 100:  # elongated images mostly get the fallback center box
        assert len(set(boxes)) > 50


@pytest.mark.parametrize("rc", ["paper", "resized"])
def test_random_crops_are_reproducible_flipped_and_vary(rc: str):
    pixels = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    crops = [random_crop(image, rc=rc, generator=crop_generator(0, epoch, 0, 0)) for epoch in range(8)]
    assert all(crop.shape == (3, 224, 224) and crop.dtype == torch.uint8 for crop in crops)
    assert torch.equal(crops[0], random_crop(image, rc=rc, generator=crop_generator(0, 0, 0, 0)))
    assert len({crop.numpy().tobytes() for crop in crops}) == len(crops)
    with pytest.raises(ValueError, match="--rc"):
        random_crop(image, rc="center", generator=crop_generator(0, 0, 0, 0))


def test_backbone_from_store_refuses_unknown_cnns_and_wrong_weights(tmp_path: Path):
    attrs = {"backbone": "resnet18", "layer": "avgpool", "weights_name": "none", "weights_seed": 3,
             "weights_sha256": ""}
    rebuilt = backbone_from_store(attrs, store_path=tmp_path / "s.h5", feature_dim=512)
    expected = build_backbone("resnet18", None, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), expected.state_dict().values()))
    with pytest.raises(ValueError, match="synthetic"):
        backbone_from_store(dict(attrs, backbone="synthetic"), store_path=tmp_path / "s.h5", feature_dim=512)
    with pytest.raises(ValueError, match="seed is not recorded"):
        backbone_from_store(dict(attrs, weights_seed=""), store_path=tmp_path / "s.h5", feature_dim=512)
    with pytest.raises(ValueError, match="512-d"):
        backbone_from_store(attrs, store_path=tmp_path / "s.h5", feature_dim=2048)
    wrong = tmp_path / "other.pth"
    wrong.write_bytes(b"not the weights the store was made with")
    file_attrs = dict(attrs, weights_name="resnet18-f37072fd.pth", weights_sha256="ab" * 32, weights_seed="")
    with pytest.raises(ValueError, match="sha256"):
        backbone_from_store(file_attrs, store_path=tmp_path / "s.h5", feature_dim=512, weights=str(wrong))
    with pytest.raises(FileNotFoundError, match="--weights"):
        backbone_from_store(file_attrs, store_path=tmp_path / "s.h5", feature_dim=512, weights=str(tmp_path / "no"))


def test_the_weight_file_is_found_beside_the_store_when_the_recorded_path_is_stale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from extract.weights import sha256_of_file

    net = torchvision.models.resnet18(weights=None)
    store_folder = tmp_path / "moved"
    store_folder.mkdir()
    torch.save(net.state_dict(), store_folder / "my_resnet18.pth")
    config_json_path(store_folder / "s.h5").write_text(json.dumps({"weights": "demo_out/my_resnet18.pth"}))
    monkeypatch.chdir(tmp_path)  # the relative path an older extract recorded leads nowhere from here
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_hub"))
    attrs = {"backbone": "resnet18", "layer": "avgpool", "weights_name": "my_resnet18.pth", "weights_seed": "",
             "weights_sha256": sha256_of_file(store_folder / "my_resnet18.pth")}
    rebuilt = backbone_from_store(attrs, store_path=store_folder / "s.h5", feature_dim=512)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.net.state_dict().values(), net.state_dict().values())
               if a.dtype.is_floating_point)


def test_resolve_config_takes_model_fields_from_the_checkpoint():
    saved = dataclasses.replace(TrainConfig(), embed_dim=32, word_dim=16, loss="sh", store="/data/s.h5",
                                text_pool="mean").to_dict()
    resolved = resolve_config(FinetuneConfig(checkpoint="c.pt", lr=1e-4), saved)
    assert (resolved.embed_dim, resolved.loss, resolved.text_pool, resolved.store) == (32, "sh", "mean", "/data/s.h5")
    assert resolved.lr == 1e-4 and resolved.epochs == 15 and resolved.cnn_lr == 2e-5
    assert resolve_config(FinetuneConfig(checkpoint="c.pt", embed_dim=32), saved).embed_dim == 32
    with pytest.raises(ValueError, match="embed_dim: checkpoint 32, given 64"):
        resolve_config(FinetuneConfig(checkpoint="c.pt", embed_dim=64), saved)
    assert set(CHECKPOINT_FIELDS) <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_finetune_config_fields_document_themselves():
    for config_field in dataclasses.fields(FinetuneConfig):
        assert config_field.metadata.get("help"), config_field.name
    assert dataclasses.fields(FinetuneConfig)[0].name == "store"  # inherited order kept for the CLI
    with pytest.raises(ValueError, match="--checkpoint is required"):
        FinetuneConfig().validate()
    with pytest.raises(ValueError, match="--rc center is not one of paper, resized"):
        FinetuneConfig(checkpoint="c.pt", rc="center").validate()
    with pytest.raises(ValueError, match="--cnn-lr"):
        FinetuneConfig(checkpoint="c.pt", cnn_lr=0.0).validate()
    with pytest.raises(ValueError, match="--unfreeze"):
        FinetuneConfig(checkpoint="c.pt", unfreeze="some").validate()


def test_adaptive_head_on_one_crop_equals_the_set_of_one():
    config = FinetuneConfig(embed_dim=8, word_dim=4, feature_mode="10c-set", image_pool="adaptive")
    model = build_model(config, vocab_size=10, feature_dim=16)
    features = torch.randn(3, 16)
    head = model.image_encoder.head
    assert torch.allclose(head(features), head(features.unsqueeze(1)), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cnn_trains_under_autocast_on_cuda(resnet18_backbone, dtype: torch.dtype):
    cnn = CNNBackbone(resnet18_backbone(), grad_checkpointing=True).cuda()
    cnn.unfreeze_backbone(None)
    cnn.train()
    with torch.autocast("cuda", dtype=dtype):
        features = cnn(_crops().cuda())
    features.float().pow(2).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in cnn.parameters() if p.requires_grad)
