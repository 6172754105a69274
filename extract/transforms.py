"""Paper preprocessing: resize to 256x256, 224 crops (center or TenCrop), ImageNet normalisation; also the
reference code's eval transform (shorter side 256, aspect kept, center 224) for its imported models."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from common.choices import IMAGE_RESIZES
from features.schema import CENTER_CROP_INDEX

RESIZE = 256  # images are resized (aspect ratio not kept) to RESIZE x RESIZE, as in the VSE++ paper
CROP = 224  # side of every crop fed to the CNN
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation, RGB order
IMAGENET_STD = (0.229, 0.224, 0.225)

Box = tuple[int, int, int, int]  # (top, left, height, width)


def resize_image(image: Image.Image, size: int = RESIZE) -> Image.Image:
    """Resize an RGB PIL image to size x size with PIL bilinear filtering.

    PIL's bilinear filter widens its support when downscaling, i.e. it is antialiased; this is exactly
    what ``torchvision.transforms.Resize((size, size))`` does on a PIL image. Every stage uses this PIL
    path (never the tensor resize, whose antialiasing differs slightly) so features stay comparable.
    """
    return image.resize((size, size), Image.Resampling.BILINEAR)


def pil_to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> contiguous uint8 tensor [3, H, W] (no scaling; normalise later with ``normalize``)."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode!r}; convert it first (extract.loader.to_rgb)")
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)))


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


def _cut(image_chw: np.ndarray, boxes: list[Box]) -> np.ndarray:
    """Copy the boxes of one [3, H, W] array into a new contiguous [len(boxes), 3, h, w] array."""
    height, width = boxes[0][2], boxes[0][3]
    out = np.empty((len(boxes), image_chw.shape[0], height, width), dtype=image_chw.dtype)
    for number, (top, left, box_height, box_width) in enumerate(boxes):
        out[number] = image_chw[:, top:top + box_height, left:left + box_width]
    return out


# Cropping goes through numpy on purpose: torch's per-op overhead made the ten slices + flip ~30x slower
# than these plain copies in DataLoader workers (measured: 26 ms vs 0.9 ms per image).
def ten_crop(image_chw: torch.Tensor, crop: int = CROP) -> torch.Tensor:
    """CPU [3, S, S] square image -> [10, 3, crop, crop]: five crops, then the same boxes of the mirror image."""
    array = _square_array(image_chw)
    boxes = ten_crop_boxes(array.shape[1], crop)
    return torch.from_numpy(np.concatenate([_cut(array, boxes), _cut(array[:, :, ::-1], boxes)]))


def center_crop(image_chw: torch.Tensor, crop: int = CROP) -> torch.Tensor:
    """CPU [3, S, S] square image -> [1, 3, crop, crop], the center box of ``ten_crop``."""
    array = _square_array(image_chw)
    return torch.from_numpy(_cut(array, [five_crop_boxes(array.shape[1], crop)[CENTER_CROP_INDEX]]))


def _square_array(image_chw: torch.Tensor) -> np.ndarray:
    """Validate a square [3, S, S] CPU tensor and view it as a numpy array (no copy)."""
    if image_chw.ndim != 3 or image_chw.shape[1] != image_chw.shape[2]:
        raise ValueError(f"expected a square [3, S, S] image tensor, got shape {tuple(image_chw.shape)}; "
                         "resize with resize_image first")
    return image_chw.numpy()


def resize_shorter_side(image: Image.Image, size: int = RESIZE) -> Image.Image:
    """Resize an RGB PIL image so its shorter side is `size`, keeping the aspect ratio, PIL bilinear.

    torchvision's ``Resize(size)`` on a PIL image (the reference code's eval transform): the longer side
    becomes int(size * long / short), truncated, and an image already at that size is left as it is.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    return image if new_size == image.size else image.resize(new_size, Image.Resampling.BILINEAR)


def center_crop_keep_aspect(image: Image.Image, crop: int = CROP) -> torch.Tensor:
    """RGB PIL image -> uint8 [1, 3, crop, crop]: ``Resize(256)`` then ``CenterCrop(crop)`` as torchvision does
    (offsets int(round((side - crop) / 2)))."""
    array = pil_to_uint8_tensor(resize_shorter_side(image)).numpy()
    height, width = array.shape[1:]
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    return torch.from_numpy(_cut(array, [(top, left, crop, crop)]))


def crop_image(image: Image.Image, crops: int, *, resize: str = "square") -> torch.Tensor:
    """RGB PIL image (any size) -> uint8 [crops, 3, CROP, CROP] after the paper's 256x256 resize ("square"), or
    the center crop of the aspect-keeping resize ("keep-aspect", one crop: the reference code's eval transform)."""
    if resize not in IMAGE_RESIZES:
        raise ValueError(f"unknown image resize {resize!r}; valid: {', '.join(IMAGE_RESIZES)}")
    if resize == "keep-aspect":
        if crops != 1:
            raise ValueError(f"the keep-aspect resize gives one center crop, not {crops}; use crops=1")
        return center_crop_keep_aspect(image)
    image_chw = pil_to_uint8_tensor(resize_image(image))
    if crops == 10:
        return ten_crop(image_chw)
    if crops == 1:
        return center_crop(image_chw)
    raise ValueError(f"crops must be 1 or 10, got {crops!r}")


def normalize(crops_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float, scaled to [0, 1] then standardised with ImageNet mean/std.

    Same values as ``ToTensor()`` then ``Normalize(IMAGENET_MEAN, IMAGENET_STD)`` (up to float rounding,
    < 1e-6), computed as one multiply-subtract in place. Kept apart from cropping so the loader ships
    uint8 (4x fewer bytes) and this runs on the device.
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    scale = (1.0 / (255.0 * std)).to(dtype=dtype, device=crops_uint8.device)
    shift = (mean / std).to(dtype=dtype, device=crops_uint8.device)
    return crops_uint8.to(dtype).mul_(scale).sub_(shift)


def ten_crop_normalized(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> normalised float32 [10, 3, 224, 224] in TenCrop order."""
    return normalize(crop_image(image, 10))


def center_crop_normalized(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> normalised float32 [1, 3, 224, 224] (center crop of the 256x256 resize)."""
    return normalize(crop_image(image, 1))
