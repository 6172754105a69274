"""The fine-tuned CNN: a torchvision backbone cut into stages, with freezing, frozen BatchNorm and checkpointing.

`CNNBackbone` wraps extract's FeatureBackbone (same modules, same weights, same state-dict keys under
`net.`; the stage split is the backbone table's, extract/backbones.py) and is put in front of the
train-stage ImageHead with `ImageEncoder.set_backbone`. It takes the uint8 crops the loaders produce and
normalises them itself, so batches stay uint8 until the device. `backbone_from_store` rebuilds exactly
the CNN a feature store was extracted with, from its attributes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from extract.backbones import BACKBONES, FeatureBackbone, build_backbone
from extract.config import config_json_path
from extract.transforms import normalize
from features.attrs import store_origin
from features.schema import ORIGIN_IMPORT
from extract.weights import (NO_WEIGHTS, download_weights, hub_checkpoint_dir, sha256_of_file,
                             torchvision_weights_url)
from train.finetune.config import FinetuneConfig, parse_unfreeze
from train.model import VSEModel

logger = logging.getLogger(__name__)

BATCH_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class CNNBackbone(nn.Module):
    """uint8 crops [B, 3, H, W] -> features [B, D], the CNN of a FeatureBackbone split into stages.

    Only the last `num_trainable_stages` stages are trained (`unfreeze_backbone` / `freeze_backbone`); the
    frozen prefix runs without autograd and always in eval mode. BatchNorm layers stay in eval mode with
    frozen affine parameters unless `train_bn`, since statistics of small batches are noisy.
    """

    def __init__(self, backbone: FeatureBackbone, *, train_bn: bool = False, grad_checkpointing: bool = False,
                 channels_last: bool = True) -> None:
        super().__init__()
        if grad_checkpointing and train_bn:
            raise ValueError("--grad-checkpointing recomputes forward passes, which would update BatchNorm running "
                             "statistics twice; use it with frozen BatchNorm (drop --train-bn)")
        self.net = backbone.net
        self.name, self.feature_dim, self.layer_name = backbone.name, backbone.feature_dim, backbone.layer_name
        self.train_bn, self.grad_checkpointing, self.channels_last = train_bn, grad_checkpointing, channels_last
        self._stages = backbone.stages()  # a plain list: the modules are registered under net
        self.num_trainable_stages = 0
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.freeze_backbone()

    @property
    def stage_names(self) -> list[str]:
        """Names of the stages, input first."""
        return [name for name, _ in self._stages]

    def freeze_backbone(self) -> None:
        """No CNN parameter is trained."""
        self.unfreeze_backbone(0)

    def unfreeze_backbone(self, last_n: int | None = None) -> None:
        """Train the last `last_n` stages (None = all); BatchNorm affine parameters only with train_bn."""
        count = len(self._stages)
        last_n = count if last_n is None else last_n
        if not 0 <= last_n <= count:
            raise ValueError(f"--unfreeze {last_n} is outside [0, {count}]: {self.name} has the stages "
                             f"{', '.join(self.stage_names)}; pass 'all' or a number up to {count}")
        self.num_trainable_stages = last_n
        for parameter in self.net.parameters():
            parameter.requires_grad_(False)
        for _, stage in self._stages[count - last_n:]:
            for module in stage.modules():
                if self.train_bn or not isinstance(module, BATCH_NORM_TYPES):
                    for parameter in module.parameters(recurse=False):
                        parameter.requires_grad_(True)
        self.train(self.training)  # re-apply the eval mode of frozen parts

    def train(self, mode: bool = True) -> "CNNBackbone":
        """Like nn.Module.train, but frozen stages, and BatchNorm without train_bn, stay in eval mode."""
        super().train(mode)
        if mode:
            first_trainable = len(self._stages) - self.num_trainable_stages
            for _, stage in self._stages[:first_trainable]:
                stage.eval()
            if not self.train_bn:
                for module in self.net.modules():
                    if isinstance(module, BATCH_NORM_TYPES):
                        module.eval()
        return self

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 crops [B, 3, H, W] (0..255, RGB) -> features [B, feature_dim] (ImageNet normalisation here)."""
        if crops.dtype != torch.uint8 or crops.dim() != 4:
            raise ValueError(f"CNNBackbone takes uint8 crops [B, 3, H, W], got {crops.dtype} {tuple(crops.shape)}")
        images = normalize(crops)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        first_trainable = len(self._stages) - self.num_trainable_stages
        with torch.no_grad():  # the frozen prefix needs no graph
            for _, stage in self._stages[:first_trainable]:
                images = stage(images)
        for _, stage in self._stages[first_trainable:]:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                images = checkpoint(stage, images, use_reentrant=False)
            else:
                images = stage(images)
        return images


def _weight_candidates(attrs: dict, *, weights: str, store_path: Path) -> list[Path]:
    """Where the store's weight file may be: --weights; else the hub cache, the extract config's path, and a file
    of the same name beside the store (a moved file, or a relative path an older extract recorded), once each.

    The caller checks each by sha256, so a look in a wrong place can only be skipped, never used.
    """
    if weights:
        return [Path(weights).expanduser()]
    name = str(attrs["weights_name"])
    candidates = [hub_checkpoint_dir() / name]
    extract_config = config_json_path(store_path)
    if extract_config.is_file():
        spec = json.loads(extract_config.read_text(encoding="utf-8")).get("weights", "")
        if spec:
            candidates.append(Path(spec).expanduser())
    candidates.append(store_path.parent / name)
    unique: dict[Path, Path] = {}
    for path in candidates:
        if path.is_file():
            unique.setdefault(path.resolve(), path)
    return list(unique.values())


def store_weights_file(attrs: dict, *, weights: str, store_path: Path, offline: bool = False) -> Path:
    """The weight file a store was extracted with, found and checked by sha256; torchvision's own file is
    downloaded into the torch hub cache when it is found nowhere (unless offline)."""
    expected = attrs.get("weights_sha256") or ""
    if not expected:
        raise ValueError(f"{store_path}: weights {attrs['weights_name']!r} have no sha256 attribute; the CNN cannot "
                         "be verified, re-extract the store with this code")
    for path in _weight_candidates(attrs, weights=weights, store_path=store_path):
        if not path.is_file():
            continue
        found = sha256_of_file(path)
        if found == expected:
            return path
        if weights:
            raise ValueError(f"--weights {str(path)!r} has sha256 {found[:12]}..., but {store_path} was extracted "
                             f"with {attrs['weights_name']!r} (sha256 {expected[:12]}...); pass that file")
        logger.warning("%s has sha256 %s..., not the store's %s...; skipped", path, found[:12], expected[:12])
    if weights:
        raise FileNotFoundError(f"--weights {weights!r} does not exist; pass the file {attrs['weights_name']!r} "
                                f"the store was extracted with")
    url = torchvision_weights_url(str(attrs["weights_name"]))
    if url:
        path = download_weights(str(attrs["weights_name"]), url, offline=offline)
        if sha256_of_file(path) == expected:
            return path
        raise ValueError(f"{path} (downloaded from {url}) has another sha256 than the one {store_path} records "
                         f"({expected[:12]}...); pass the file the store was extracted with as --weights PATH")
    raise FileNotFoundError(f"weight file {attrs['weights_name']!r} (sha256 {expected[:12]}...) of {store_path} not "
                            f"found in {str(hub_checkpoint_dir())!r}, its extract config or beside it; pass "
                            "--weights PATH")


def backbone_from_store(attrs: dict, *, store_path: str | Path, feature_dim: int, weights: str = "") -> FeatureBackbone:
    """Rebuild the CNN a store was extracted with (backbone, weights or seeded random init); mismatch = error."""
    store_path = Path(store_path)
    name, weights_name = attrs.get("backbone"), str(attrs.get("weights_name"))
    if name not in BACKBONES and store_origin(attrs) == ORIGIN_IMPORT:
        raise ValueError(f"{store_path} holds imported features (pipeline.py import-features), made by no CNN this "
                         "project can rebuild: none can embed new images or be fine-tuned; use a store that "
                         "`pipeline.py extract` wrote from the images")
    if name not in BACKBONES:
        raise ValueError(f"{store_path} was extracted with backbone {name!r}, not one of {', '.join(BACKBONES)}; "
                         "fine-tuning needs a store written by `extract` with a torchvision backbone")
    if weights_name == NO_WEIGHTS:
        seed = attrs.get("weights_seed")
        if not isinstance(seed, int):
            raise ValueError(f"{store_path} was extracted from a random init whose seed is not recorded; the same "
                             "CNN cannot be rebuilt: re-extract the store (with --weights none --seed N) and retrain")
        if weights:
            raise ValueError(f"{store_path} was extracted from a random init (seed {seed}); drop --weights")
        backbone = build_backbone(name, None, seed=seed)
    else:
        backbone = build_backbone(name, store_weights_file(attrs, weights=weights, store_path=store_path))
    if backbone.feature_dim != feature_dim or backbone.layer_name != attrs.get("layer"):
        raise ValueError(f"{name} gives {backbone.feature_dim}-d {backbone.layer_name} features, but {store_path} "
                         f"holds {feature_dim}-d {attrs.get('layer')!r} ones; the store is not from this backbone")
    logger.info("CNN %s (%s) rebuilt from the attributes of %s", name, weights_name, store_path)
    return backbone


def attach_cnn(model: VSEModel, cfg: FinetuneConfig, *, backbone: object) -> CNNBackbone:
    """Put the CNN in front of the model's ImageHead with cfg's unfreezing, BatchNorm and memory options."""
    cnn = CNNBackbone(backbone, train_bn=cfg.train_bn, grad_checkpointing=cfg.grad_checkpointing,
                      channels_last=cfg.channels_last)
    cnn.unfreeze_backbone(parse_unfreeze(cfg.unfreeze))
    model.image_encoder.set_backbone(cnn)
    return cnn
