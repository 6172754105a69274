"""Paper preprocessing: resize to 256x256, 224 crops (center or TenCrop), ImageNet normalisation."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

RESIZE = 256  # images are resized (aspect ratio not kept) to RESIZE x RESIZE, as in the VSE++ paper
CROP = 224  # side of every crop fed to the CNN
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation, RGB order
IMAGENET_STD = (0.229, 0.224, 0.225)
CENTER_CROP_INDEX = 4  # position of the center crop among the ten (TenCrop order)

Box = tuple[int, int, int, int]  # (top, left, height, width)


def resize_image(image: Image.Image, size: int = RESIZE) -> Image.Image:
    """Resize an RGB PIL image to size x size with PIL bilinear filtering.

    PIL's bilinear filter widens its support when downscaling, i.e. it is antialiased; this is exactly
    what ``torchvision.transforms.Resize((size, size))`` does on a PIL image. Every stage uses this PIL
    path (never the tensor resize, whose antialiasing differs slightly) so features stay comparable.
    """
    return image.resize((size, size), Image.Resampling.BILINEAR)


def pil_to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor [3, H, W] (no scaling; normalise later with ``normalize``)."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode!r}; convert it first (extract.loader.to_rgb)")
    array = np.asarray(image, dtype=np.uint8)  # [H, W, 3]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def five_crop_boxes(size: int = RESIZE, crop: int = CROP) -> list[Box]:
    """The five (top, left, height, width) boxes of torchvision's FiveCrop: tl, tr, bl, br, center."""
    if not 0 < crop <= size:
        raise ValueError(f"crop {crop} must be in (0, {size}] for images of side {size}")
    center = int(round((size - crop) / 2.0))  # torchvision's center_crop offset (16 for 256 -> 224)
    far = size - crop
    return [(0, 0, crop, crop), (0, far, crop, crop), (far, 0, crop, crop), (far, far, crop, crop),
            (center, center, crop, crop)]


def ten_crop_boxes(size: int = RESIZE, crop: int = CROP) -> list[Box]:
    """The five crop boxes of TenCrop (tl, tr, bl, br, center); the other five are taken from the mirror.

    Crops 5..9 of ``ten_crop`` are the same five boxes cut from the horizontally flipped image (this is
    torchvision's definition), so crop 5 is the flip of the *top-right* crop of the original, crop 9 the
    flip of the center crop.
    """
    return five_crop_boxes(size, crop)


def _cut(image_chw: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
    """Stack the boxes cut from one [3, H, W] image -> [len(boxes), 3, h, w]."""
    return torch.stack([image_chw[:, top:top + height, left:left + width] for top, left, height, width in boxes])


def ten_crop(image_chw: torch.Tensor, crop: int = CROP) -> torch.Tensor:
    """[3, S, S] square image -> [10, 3, crop, crop]: five crops then the five crops of the mirrored image."""
    size = _square_side(image_chw)
    boxes = ten_crop_boxes(size, crop)
    return torch.cat([_cut(image_chw, boxes), _cut(image_chw.flip(-1), boxes)])


def center_crop(image_chw: torch.Tensor, crop: int = CROP) -> torch.Tensor:
    """[3, S, S] square image -> [1, 3, crop, crop], the center box of ``ten_crop``."""
    size = _square_side(image_chw)
    return _cut(image_chw, [five_crop_boxes(size, crop)[CENTER_CROP_INDEX]])


def _square_side(image_chw: torch.Tensor) -> int:
    if image_chw.ndim != 3 or image_chw.shape[1] != image_chw.shape[2]:
        raise ValueError(f"expected a square [3, S, S] image tensor, got shape {tuple(image_chw.shape)}; "
                         "resize with resize_image first")
    return int(image_chw.shape[1])


def crop_image(image: Image.Image, crops: int) -> torch.Tensor:
    """RGB PIL image (any size) -> uint8 [crops, 3, CROP, CROP] after the paper's 256x256 resize."""
    image_chw = pil_to_uint8_tensor(resize_image(image))
    if crops == 10:
        return ten_crop(image_chw)
    if crops == 1:
        return center_crop(image_chw)
    raise ValueError(f"crops must be 1 or 10, got {crops!r}")


def normalize(crops_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float, scaled to [0, 1] then standardised with ImageNet mean/std.

    Same arithmetic as ``ToTensor()`` followed by ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``. Kept
    separate from cropping so the loader ships uint8 (4x fewer bytes) and this runs on the device.
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=crops_uint8.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype, device=crops_uint8.device).view(3, 1, 1)
    return (crops_uint8.to(dtype) / 255.0 - mean) / std


def ten_crop_normalized(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> normalised float32 [10, 3, 224, 224] in TenCrop order."""
    return normalize(crop_image(image, 10))


def center_crop_normalized(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> normalised float32 [1, 3, 224, 224] (center crop of the 256x256 resize)."""
    return normalize(crop_image(image, 1))
