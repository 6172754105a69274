"""The reference VSE++ code's full-image encoder (EncoderImageFull) as this project's fine-tuned model.

EncoderImageFull (fartashf/vsepp model.py) is a torchvision CNN cut below its classifier (VGG: the classifier
minus its last layer, i.e. fc7 after its ReLU; ResNet: fc replaced by an empty Sequential, i.e. the flattened
average pool), then l2norm of the CNN features, fc, l2norm unless no_imgnorm, abs if use_abs. This project's
CNNBackbone cuts its torchvision net at the same layers (extract/backbones.py), and ImageHead with feature_norm
adds the l2norm before fc, so the weights only need renaming: DataParallel's 'module.' goes (the reference wraps
VGG's features, or the whole ResNet), and VGG files saved before torchvision's layer renumbering (pytorch/vision
989d52a) name fc6 and fc7 classifier.1 and classifier.4. Images are read as the reference evaluates them:
Resize(256) keeping the aspect ratio, CenterCrop(224) (model_spec "image_resize": "keep-aspect").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from extract.backbones import BACKBONES, backbone_spec
from extract.transforms import normalize
from train.model import VSEModel

IMAGE_RESIZE = "keep-aspect"  # the reference's get_transform for val/test (extract.transforms.crop_image)
CNN_PREFIX = "cnn."  # EncoderImageFull's CNN parameters; its projection is fc.*
BACKBONE_PREFIX = "image_encoder.backbone.net."  # the same parameters in VSEModel with a CNNBackbone
# classifier indices of VGG files saved before torchvision renumbered them -> today's (the reference's own rename)
OLD_VGG_CLASSIFIER = {"classifier.1.": "classifier.0.", "classifier.4.": "classifier.3."}
BATCH_NORM_COUNTER = "num_batches_tracked"  # added in torch 0.4.1, absent from the authors' files


def is_full_encoder(opt: dict, image_state: dict) -> bool:
    """True for an EncoderImageFull checkpoint: raw-image data (data_name without _precomp) or CNN weights."""
    return not str(opt.get("data_name", "")).endswith("_precomp") or any(key.startswith(CNN_PREFIX)
                                                                         for key in image_state)


def cnn_type_of(opt: dict, *, path: str) -> str:
    """The checkpoint's cnn_type when this project has that backbone (ValueError naming the ones it has)."""
    name = opt.get("cnn_type")
    if name not in BACKBONES:
        raise ValueError(f"{path}: cnn_type {name!r} is not one of this project's backbones ({', '.join(BACKBONES)}); "
                         "its full-image model cannot be rebuilt here")
    return str(name)


def backbone_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of this project's `name` backbone net (its FeatureBackbone.net), built on the
    meta device: no memory, no init time."""
    with torch.device("meta"):
        net = getattr(models, name)(weights=None)
    backbone_spec(name).cut(net)
    return {key: tuple(value.shape) for key, value in net.state_dict().items()}


def reference_cnn_key(key: str) -> str:
    """A reference 'cnn.*' key as torchvision names it: cnn.features.module.0.weight -> features.0.weight,
    cnn.module.layer1.0.conv1.weight -> layer1.0.conv1.weight, cnn.classifier.1.weight -> classifier.0.weight."""
    parts = key[len(CNN_PREFIX):].split(".")
    if parts[0] == "module":  # DataParallel over the whole ResNet
        parts = parts[1:]
    elif parts[:2] == ["features", "module"]:  # DataParallel over VGG's features
        parts = parts[:1] + parts[2:]
    name = ".".join(parts)
    for old, new in OLD_VGG_CLASSIFIER.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def cnn_state_of(image_state: dict[str, torch.Tensor], *, cnn_type: str, path: str) -> dict[str, torch.Tensor]:
    """The reference's 'cnn.*' weights as VSEModel's backbone keys, every key and shape checked (ValueError);
    BatchNorm's num_batches_tracked, which eval never reads, is 0 where the file lacks it."""
    expected = backbone_shapes(cnn_type)
    renamed: dict[str, torch.Tensor] = {}
    for key, value in image_state.items():
        if key.startswith(CNN_PREFIX):
            name = reference_cnn_key(key)
            if name in renamed:  # e.g. classifier.0 beside an old-style classifier.1
                raise ValueError(f"{path}: two CNN weights are both {name} (one is {key}); the file is corrupted")
            renamed[name] = value
    for name, shape in expected.items():
        if name.endswith(BATCH_NORM_COUNTER) and name not in renamed:
            renamed[name] = torch.zeros(shape, dtype=torch.int64)
    missing, unexpected = sorted(set(expected) - set(renamed)), sorted(set(renamed) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: the CNN weights do not fit {cnn_type} cut as the reference cuts it: missing "
                         f"{missing[:6]}, unexpected {unexpected[:6]}; the checkpoint's cnn_type is wrong")
    state = {}
    for name, value in renamed.items():
        if tuple(value.shape) != expected[name]:
            raise ValueError(f"{path}: CNN weight {name} has shape {tuple(value.shape)}, {cnn_type} has "
                             f"{expected[name]}; the checkpoint's cnn_type is wrong")
        state[BACKBONE_PREFIX + name] = value if name.endswith(BATCH_NORM_COUNTER) else value.to(torch.float32)
    return {key: value.detach().contiguous() for key, value in state.items()}


def feature_dim_of(cnn_type: str) -> int:
    """Size of the CNN features the reference's fc reads (VGG: 4096, ResNet152: 2048)."""
    return backbone_spec(cnn_type).feature_dim


def reference_cut_net(model: VSEModel, cnn_type: str) -> nn.Module:
    """A second torchvision `cnn_type` cut as EncoderImageFull cuts it (VGG: classifier[:-1]; ResNet: fc = an
    empty Sequential), holding `model`'s CNN weights."""
    net = getattr(models, cnn_type)(weights=None)
    if cnn_type.startswith("vgg"):
        net.classifier = nn.Sequential(*list(net.classifier.children())[:-1])
    else:
        net.fc = nn.Sequential()
    net.load_state_dict(model.image_encoder.backbone.net.state_dict())
    return net.eval()


@torch.no_grad()
def reference_image_embeddings(model: VSEModel, crops: torch.Tensor, *, cnn_type: str, use_abs: bool,
                               image_norm: bool) -> torch.Tensor:
    """image_emb of uint8 crops [B, 3, 224, 224] computed as EncoderImageFull.forward does:

        image_emb = [abs] [l2norm] (fc(l2norm(cnn((crops / 255 - mean) / std))))
    with the reference's cut of the CNN, so it checks this project's cut, stages and head against it.
    """
    features = reference_cut_net(model, cnn_type)(normalize(crops))
    image_emb = model.image_encoder.head.fc(F.normalize(features, dim=-1))
    image_emb = F.normalize(image_emb, dim=-1) if image_norm else image_emb
    return image_emb.abs() if use_abs else image_emb
