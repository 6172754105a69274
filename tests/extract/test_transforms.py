"""Crop geometry and normalisation equal manual slicing and torchvision's own transforms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from extract.transforms import (CENTER_CROP_INDEX, IMAGENET_MEAN, IMAGENET_STD, center_crop, crop_image, normalize,
                                resize_image, ten_crop, ten_crop_boxes, ten_crop_normalized)


def _image_tensor() -> torch.Tensor:
    """A 256x256 uint8 image whose every pixel is distinct (so any misplaced crop shows)."""
    return torch.arange(3 * 256 * 256, dtype=torch.int64).reshape(3, 256, 256).remainder(251).to(torch.uint8)


def test_ten_crop_boxes_are_corners_then_center() -> None:
    assert ten_crop_boxes() == [(0, 0, 224, 224), (0, 32, 224, 224), (32, 0, 224, 224), (32, 32, 224, 224),
                                (16, 16, 224, 224)]


def test_ten_crop_equals_manual_slicing() -> None:
    image = _image_tensor()
    crops = ten_crop(image)
    assert crops.shape == (10, 3, 224, 224)
    manual = [image[:, :224, :224], image[:, :224, 32:], image[:, 32:, :224], image[:, 32:, 32:],
              image[:, 16:240, 16:240]]
    for k in range(5):
        assert torch.equal(crops[k], manual[k])
    # crops 5..9 are the five boxes of the mirrored image: mirror of tl is flip(tr), of tr is flip(tl), ...
    mirror_of = [1, 0, 3, 2, 4]
    for k in range(5):
        assert torch.equal(crops[5 + k], manual[mirror_of[k]].flip(-1))
    assert torch.equal(center_crop(image)[0], crops[CENTER_CROP_INDEX])


def test_matches_torchvision_ten_crop_pipeline() -> None:
    rng = np.random.default_rng(0)
    pil = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    reference = T.Compose([T.Resize((256, 256)), T.TenCrop(224),
                           T.Lambda(lambda crops: torch.stack([T.ToTensor()(c) for c in crops])),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(pil)
    ours = ten_crop_normalized(pil)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_resize_matches_torchvision_pil_resize() -> None:
    rng = np.random.default_rng(1)
    pil = Image.fromarray(rng.integers(0, 256, (500, 375, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(resize_image(pil)), np.asarray(T.Resize((256, 256))(pil)))


def test_normalize_mean_std() -> None:
    gray = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    expected = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(normalize(gray)[0, :, 0, 0], expected)


def test_crop_image_rejects_bad_crops() -> None:
    with pytest.raises(ValueError, match="crops must be 1 or 10"):
        crop_image(Image.new("RGB", (8, 8)), 5)
