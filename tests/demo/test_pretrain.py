"""Tests of the demo backbone pretraining: it trains, is deterministic, and saves a strict torchvision state_dict."""

import json
from pathlib import Path

import pytest
import torch
import torchvision

from demo.pretrain import PretrainConfig, pretrain_demo_backbone

TINY_RUN = {"epochs": 1, "batch_size": 8, "resolution": 32, "bn_recalibration_images": 2, "seed": 0}


def pretrain(dataset_json: Path, image_root: Path, out: Path, **options) -> Path:
    return pretrain_demo_backbone(PretrainConfig(dataset_json=str(dataset_json), image_root=str(image_root),
                                                 out_weights=str(out), **options))


@pytest.fixture(scope="module")
def pretrained(demo_dataset_json: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights pretrained for one epoch at 32 px on the tiny dataset."""
    out = tmp_path_factory.mktemp("pretrain") / "demo_resnet18.pth"
    return pretrain(demo_dataset_json, demo_dataset_json.parent, out, **TINY_RUN)


@pytest.mark.slow
def test_saved_weights_load_strictly_into_torchvision(pretrained: Path) -> None:
    state = torch.load(pretrained, weights_only=True)
    model = torchvision.models.resnet18()
    model.load_state_dict(state, strict=True)
    assert state["fc.weight"].shape == (1000, 512)
    assert all(tensor.device.type == "cpu" for tensor in state.values())


def test_training_changed_the_random_init(pretrained: Path) -> None:
    torch.manual_seed(TINY_RUN["seed"])
    initial = torchvision.models.resnet18().state_dict()
    trained = torch.load(pretrained, weights_only=True)
    assert not torch.equal(initial["conv1.weight"], trained["conv1.weight"])
    assert not torch.equal(initial["layer4.1.bn2.running_mean"], trained["layer4.1.bn2.running_mean"])
    assert torch.equal(initial["fc.weight"], trained["fc.weight"])  # the 1000-way fc is kept, untrained


def test_summary_json_records_settings_and_val_accuracy(pretrained: Path) -> None:
    summary = json.loads(pretrained.with_suffix(".json").read_text())
    PretrainConfig.from_dict({key: summary[key] for key in PretrainConfig().to_dict()})  # the settings, whole
    assert summary["num_train"] == 16 and summary["num_val"] == 4 and summary["resolution"] == 32
    assert set(summary["val_accuracy"]) == {"majority_baseline", "37to32", "256to224"}
    for accuracy in summary["val_accuracy"].values():
        assert {"color", "shape", "count", "size", "background"} <= set(accuracy)
        assert all(0.0 <= value <= 1.0 for value in accuracy.values())


@pytest.mark.slow  # a second pretraining
def test_same_seed_gives_the_same_weights(pretrained: Path, demo_dataset_json: Path, tmp_path: Path) -> None:
    again = pretrain(demo_dataset_json, demo_dataset_json.parent, tmp_path / "again.pth", **TINY_RUN)
    first, second = torch.load(pretrained, weights_only=True), torch.load(again, weights_only=True)
    assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize(("change", "message"), [
    ({"backbone": "vgg19"}, "backbone"),
    ({"epochs": 0}, "epochs"),
    ({"resolution": 16}, "resolution"),
    ({"device": "tpu"}, "device"),
])
def test_bad_arguments_are_rejected(demo_dataset_json: Path, tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pretrain(demo_dataset_json, demo_dataset_json.parent, tmp_path / "w.pth", **(TINY_RUN | change))
    assert not (tmp_path / "w.pth").exists()


def test_a_json_without_attribute_labels_is_rejected(tmp_path: Path) -> None:
    plain = tmp_path / "dataset_coco.json"
    plain.write_text(json.dumps({"dataset": "coco", "images": []}))
    with pytest.raises(ValueError, match="attribute_classes"):
        pretrain(plain, tmp_path, tmp_path / "w.pth", **TINY_RUN)
    with pytest.raises(FileNotFoundError):
        pretrain(tmp_path / "missing.json", tmp_path, tmp_path / "w.pth", **TINY_RUN)


def test_batchnorm_recalibration_averages_statistics_at_224() -> None:
    from demo.pretrain import _normalise, _recalibrate_batchnorm

    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    weights_before = trunk[0].weight.clone()
    pixels = torch.randint(0, 256, (6, 3, 256, 256), dtype=torch.uint8)
    _recalibrate_batchnorm(trunk, pixels, device=torch.device("cpu"), batch_size=4)  # batches of 4 and 2
    with torch.no_grad():
        outputs = trunk[0](_normalise(pixels[..., 16:240, 16:240], torch.device("cpu")))  # center 224 crops
    expected_mean = (outputs[:4].mean(dim=(0, 2, 3)) + outputs[4:].mean(dim=(0, 2, 3))) / 2  # mean of batches
    torch.testing.assert_close(trunk[1].running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    assert trunk[1].momentum == 0.1  # restored
    assert torch.equal(trunk[0].weight, weights_before)
