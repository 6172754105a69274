"""Train a torchvision ResNet from random init on the demo dataset's attribute labels (no ImageNet weights here)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from common.config import StageConfig
from common.files import atomic_write, atomic_write_json
from common.progress import Progress

logger = logging.getLogger(__name__)

SUPPORTED_BACKBONES = ("resnet18", "resnet34", "resnet50")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_PER_CROP = 256 / 224  # the extraction's resize 256 -> crop 224, kept at any training resolution
DEFAULT_EPOCHS = 6  # 400 images: colour, count, size, background, position learned; shape not yet
DEFAULT_RESOLUTION = 96  # training crop side; extraction uses 224
MIN_RESOLUTION = 32  # a ResNet's five stride-2 stages need at least this


@dataclass
class LabelledImages:
    """Decoded images of one or more splits and their integer attribute labels."""

    pixels: torch.Tensor  # uint8 [N, 3, S, S], already resized to the square side S
    labels: dict[str, torch.Tensor]  # attribute -> int64 [N] class index


def _load_split(dataset: dict[str, Any], image_root: Path, *, split: str, side: int,
                rows: list[int] | None = None) -> LabelledImages:
    """Decode the images of `split` (only its `rows`, if given), resize them to `side` x `side`, and map their
    attributes to class indices."""
    classes = dataset["attribute_classes"]
    records = [image for image in dataset["images"] if image["split"] == split]
    if rows is not None:
        records = [records[row] for row in rows]
    pixels = torch.empty((len(records), 3, side, side), dtype=torch.uint8)
    labels = {name: torch.empty(len(records), dtype=torch.int64) for name in classes}
    for row, record in enumerate(records):
        path = image_root / record["filepath"] / record["filename"]
        if not path.is_file():
            raise FileNotFoundError(f"image {path} listed in the dataset JSON does not exist; check image_root")
        with Image.open(path) as image:
            image = image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
            pixels[row] = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # HWC -> CHW
        for name, values in classes.items():
            value = record["attributes"][name]
            if value not in values:
                raise ValueError(f"image {record['filename']}: attribute {name}={value!r} is not one of {values}")
            labels[name][row] = values.index(value)
    return LabelledImages(pixels=pixels, labels=labels)


def _normalise(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [B, 3, H, W] with ImageNet mean/std, channels_last on `device`."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    images = pixels.to(device).float().div_(255).sub_(mean).div_(std)
    return images.contiguous(memory_format=torch.channels_last)


def _random_crops(pixels: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """One random `crop` x `crop` window and a random horizontal flip per image (the paper's RC)."""
    batch, _, height, width = pixels.shape
    tops = torch.randint(0, height - crop + 1, (batch,), generator=generator).tolist()
    lefts = torch.randint(0, width - crop + 1, (batch,), generator=generator).tolist()
    flips = torch.rand(batch, generator=generator).lt(0.5).tolist()
    crops = []
    for image, top, left, flip in zip(pixels, tops, lefts, flips):
        window = image[:, top:top + crop, left:left + crop]
        crops.append(window.flip(-1) if flip else window)
    return torch.stack(crops)


def _center_crops(pixels: torch.Tensor, crop: int) -> torch.Tensor:
    """The central `crop` x `crop` window of every image (torchvision CenterCrop's rounding)."""
    top = int(round((pixels.shape[-2] - crop) / 2.0))
    left = int(round((pixels.shape[-1] - crop) / 2.0))
    return pixels[..., top:top + crop, left:left + crop]


def _build(backbone: str, classes: dict[str, list[Any]]) -> tuple[nn.Module, nn.Module, nn.ModuleDict]:
    """(full torchvision model, its pooled-feature trunk sharing the same modules, one linear head per attribute)."""
    model = torchvision.models.get_model(backbone, weights=None)  # keeps its 1000-way fc, saved untouched
    trunk = nn.Sequential(*list(model.children())[:-1], nn.Flatten(1))  # [B, 3, H, W] -> [B, D]
    heads = nn.ModuleDict({name: nn.Linear(model.fc.in_features, len(values)) for name, values in classes.items()})
    return model, trunk, heads


@torch.inference_mode()
def _accuracy(trunk: nn.Module, heads: nn.ModuleDict, data: LabelledImages, *, crop: int, resize: int,
              device: torch.device, batch_size: int) -> dict[str, float]:
    """Per-attribute accuracy of the heads on center crops (images resized to `resize` first, as extraction does)."""
    trunk.eval()
    heads.eval()
    correct = {name: 0 for name in heads}
    for start in range(0, len(data.pixels), batch_size):
        pixels = data.pixels[start:start + batch_size]
        if pixels.shape[-1] != resize:
            pixels = F.interpolate(pixels.float(), size=(resize, resize), mode="bilinear", antialias=True,
                                   align_corners=False).round().clamp(0, 255).to(torch.uint8)
        features = trunk(_normalise(_center_crops(pixels, crop), device))
        for name, head in heads.items():
            predicted = head(features).argmax(dim=1).cpu()
            correct[name] += int((predicted == data.labels[name][start:start + batch_size]).sum())
    return {name: count / len(data.pixels) for name, count in correct.items()}


@torch.no_grad()
def _recalibrate_batchnorm(trunk: nn.Module, pixels: torch.Tensor, *, device: torch.device, batch_size: int) -> None:
    """Recompute every BatchNorm's running mean/var on center crops at extraction's geometry (256 -> 224).

    Training at a lower resolution leaves statistics of smaller objects; features extracted at 224 then
    drift (the train/test resolution discrepancy). A forward pass in train mode with momentum=None
    replaces them with a plain average over `pixels` (uint8 [N, 3, 256, 256]); no weight changes.
    """
    norms = [m for m in trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over all batches
    trunk.train()
    for start in range(0, len(pixels), batch_size):
        trunk(_normalise(_center_crops(pixels[start:start + batch_size], 224), device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def _majority_baseline(train: LabelledImages, val: LabelledImages) -> dict[str, float]:
    """Val accuracy of always predicting each attribute's most frequent train class."""
    return {name: float((val.labels[name] == torch.bincount(labels).argmax()).float().mean())
            for name, labels in train.labels.items()}


def _train(trunk: nn.Module, heads: nn.ModuleDict, train: LabelledImages, *, epochs: int, batch_size: int,
           resolution: int, learning_rate: float, generator: torch.Generator, device: torch.device,
           desc: str) -> None:
    """AdamW + one-cycle schedule on the summed cross-entropy of all heads, random crops of `resolution`."""
    parameters = [*trunk.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=1e-4)
    steps_per_epoch = -(-len(train.pixels) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, pct_start=0.2,
                                                    total_steps=epochs * steps_per_epoch)
    progress = Progress(desc, epochs * steps_per_epoch, unit="batch", logger=logger)
    for epoch in range(epochs):
        trunk.train()
        heads.train()
        order = torch.randperm(len(train.pixels), generator=generator)
        loss_sum = 0.0
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            images = _normalise(_random_crops(train.pixels[rows], resolution, generator), device)
            features = trunk(images)
            loss = sum(F.cross_entropy(head(features), train.labels[name][rows].to(device))
                       for name, head in heads.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(rows)
            progress.update(1, epoch=epoch + 1, loss=f"{loss.item():.3f}")
        logger.info("epoch %d/%d: mean loss %.4f (summed over %d heads)", epoch + 1, epochs,
                    loss_sum / len(order), len(heads))
    progress.close()


def _validate(trunk: nn.Module, heads: nn.ModuleDict, train: LabelledImages, val: LabelledImages, *,
              resolution: int, device: torch.device, batch_size: int) -> dict[str, dict[str, float]]:
    """Val accuracy per attribute: majority baseline, at the training geometry, and at extraction's 256 -> 224."""
    if len(val.pixels) == 0:
        logger.warning("no val images: held-out accuracy not measured")
        return {}
    val_accuracy = {"majority_baseline": _majority_baseline(train, val)}
    resize = round(resolution * RESIZE_PER_CROP)
    for crop, resize_to in sorted({(resolution, resize), (224, 256)}):
        val_accuracy[f"{resize_to}to{crop}"] = _accuracy(trunk, heads, val, crop=crop, resize=resize_to,
                                                          device=device, batch_size=batch_size)
    for geometry, accuracy in val_accuracy.items():
        logger.info("val accuracy (%s): %s", geometry, ", ".join(f"{n} {a:.2f}" for n, a in accuracy.items()))
    return val_accuracy


@dataclass
class PretrainConfig(StageConfig):
    """How the demo's CNN is pretrained (pretrain_demo_backbone); saved in the JSON beside the weights."""

    dataset_json: str = field(default="", metadata={"help": "Karpathy JSON of generate_demo_dataset",
                                                    "required": True})
    image_root: str = field(default="", metadata={"help": "folder the JSON's image paths are relative to",
                                                  "required": True})
    out_weights: str = field(default="", metadata={"help": "the torchvision state_dict to write", "required": True})
    backbone: str = field(default="resnet18", metadata={"help": "torchvision ResNet trained from random init",
                                                        "choices": SUPPORTED_BACKBONES})
    epochs: int = field(default=DEFAULT_EPOCHS, metadata={"help": "passes over the train split"})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    resolution: int = field(default=DEFAULT_RESOLUTION, metadata={
        "help": "training crop side in pixels (extraction's 224 is too slow on a small CPU)"})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW's peak learning rate (one-cycle)"})
    bn_recalibration_images: int = field(default=128, metadata={
        "help": "train images whose 256 -> 224 crops recompute the BatchNorm statistics (0 = off)"})
    seed: int = field(default=0, metadata={"help": "seed of the init, the order and the crops"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda", "choices": ("cpu", "cuda")})

    def validate(self) -> None:
        """ValueError naming the first option out of range; FileNotFoundError for a missing input."""
        super().validate()
        self.check_at_least(1, "epochs", "batch_size")
        self.check_at_least(0, "bn_recalibration_images")
        self.check_at_least(MIN_RESOLUTION, "resolution")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no GPU is available; use cpu")
        if not Path(self.dataset_json).is_file():
            raise FileNotFoundError(f"dataset JSON {self.dataset_json} does not exist; run generate_demo_dataset "
                                    "first")
        if not Path(self.image_root).is_dir():
            raise FileNotFoundError(f"image root {self.image_root} is not a directory")


def _read_demo_dataset(path: Path) -> dict[str, Any]:
    """The demo dataset JSON (its images and their attribute labels); ValueError for any other dataset."""
    dataset = json.loads(path.read_text())
    if "attribute_classes" not in dataset:
        raise ValueError(f"{path} has no 'attribute_classes': it is not a demo dataset made by "
                         "demo.synthetic.generate_demo_dataset")
    return dataset


def _fit(cfg: PretrainConfig, classes: dict[str, list[Any]], train: LabelledImages, *,
         full_size_train: Callable[[list[int]], LabelledImages]) -> tuple[nn.Module, nn.Module, nn.ModuleDict]:
    """(model, trunk, heads) trained from the seed's random init, BatchNorm recalibrated at 256 -> 224."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model, trunk, heads = _build(cfg.backbone, classes)
    model.to(device, memory_format=torch.channels_last)
    heads.to(device)
    _train(trunk, heads, train, epochs=cfg.epochs, batch_size=cfg.batch_size, resolution=cfg.resolution,
           learning_rate=cfg.learning_rate, generator=generator, device=device, desc=f"pretrain {cfg.backbone}")
    if cfg.bn_recalibration_images:
        # A fixed, seeded subset of train images decoded again at full size.
        subset = torch.randperm(len(train.pixels), generator=generator)[:cfg.bn_recalibration_images].sort().values
        _recalibrate_batchnorm(trunk, full_size_train(subset.tolist()).pixels, device=device,
                               batch_size=cfg.batch_size)
        logger.info("recalibrated BatchNorm statistics on %d train images at 256 -> 224", len(subset))
    return model, trunk, heads


def pretrain_demo_backbone(cfg: PretrainConfig) -> Path:
    """Train cfg.backbone from random init to classify the demo attributes; save its state_dict to cfg.out_weights.

    Only the train split is used for training; the val split (if any) gives held-out per-attribute accuracy.
    The trunk's pooled features feed one linear head per attribute (colour, shape, count, size, background,
    position and the second object's colour/shape/size); the loss is the sum of their cross-entropies.
    Images are resized to resolution*256/224 and randomly cropped to `resolution` with a random flip: the
    geometry of extraction (resize 256, crop 224) scaled down; then the BatchNorm statistics are recomputed on
    `bn_recalibration_images` train images at 256 -> 224 (0 = off), so that the weights suit extraction.
    This is a classifier's loop (cross-entropy of labels, one-cycle AdamW), not the retrieval Trainer's.
    The saved file is the plain torchvision state_dict (the untouched 1000-way fc included), so
    `torchvision.models.<backbone>().load_state_dict(torch.load(path))` works strictly. A JSON beside it
    (same name, `.json`) records the settings, the time taken and the val accuracies; both are written atomically.
    """
    cfg.validate()
    dataset_json, image_root, out_weights = Path(cfg.dataset_json), Path(cfg.image_root), Path(cfg.out_weights)
    dataset = _read_demo_dataset(dataset_json)
    resize = round(cfg.resolution * RESIZE_PER_CROP)
    started = time.perf_counter()
    train = _load_split(dataset, image_root, split="train", side=resize)
    if len(train.pixels) == 0:
        raise ValueError(f"{dataset_json} has no train images to pretrain on")
    # Held-out images are kept at full size so that accuracy can also be measured at extraction's geometry.
    val = _load_split(dataset, image_root, split="val", side=256)
    logger.info("pretraining %s from random init on %d train images (%d val), %d epochs, %dpx crops of %dpx",
                cfg.backbone, len(train.pixels), len(val.pixels), cfg.epochs, cfg.resolution, resize)
    model, trunk, heads = _fit(cfg, dataset["attribute_classes"], train, full_size_train=lambda rows: _load_split(
        dataset, image_root, split="train", side=256, rows=rows))
    train_seconds = time.perf_counter() - started
    val_accuracy = _validate(trunk, heads, train, val, resolution=cfg.resolution, device=torch.device(cfg.device),
                             batch_size=cfg.batch_size)

    out_weights.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    atomic_write(out_weights, lambda handle: torch.save(state, handle))
    summary = {**cfg.to_dict(), "resize": resize, "num_train": len(train.pixels), "num_val": len(val.pixels),
               "seconds": round(train_seconds, 1), "torch_threads": torch.get_num_threads(),
               "val_accuracy": val_accuracy}
    atomic_write_json(out_weights.with_suffix(".json"), summary)
    logger.info("saved %s weights to %s after %.1f s of training", cfg.backbone, out_weights, train_seconds)
    return out_weights
