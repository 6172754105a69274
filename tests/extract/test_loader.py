"""Every PIL mode becomes RGB; unreadable files become failure records; collate carries them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extract.loader import ImageDataset, collate_crops, make_loader, to_rgb

Awkward = tuple[dict[str, Path], dict[str, Path]]  # (images that must decode, files that must fail)


def test_to_rgb_scales_16_bit(tmp_path: Path) -> None:
    levels = np.array([[0, 257 * 100], [65535, 257 * 7]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        image.load()
        rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (2, 2, 3)
    assert rgb[..., 0].tolist() == [[0, 100], [255, 7]]


def test_to_rgb_composites_alpha_on_white() -> None:
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    rgb = np.asarray(to_rgb(rgba))
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[0, 1].tolist() == [10, 20, 30]


def test_to_rgb_palette_with_transparency() -> None:
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette)).tolist() == [[[255, 255, 255], [200, 0, 0]]]


def test_dataset_decodes_awkward_modes_and_reports_broken_files(awkward_images: Awkward) -> None:
    good, broken = awkward_images
    paths = list(good.values()) + list(broken.values())
    dataset = ImageDataset(list(range(len(paths))), paths, crops=1)
    items = [dataset[i] for i in range(len(dataset))]
    for (index, value), name in zip(items, list(good) + list(broken)):
        if name in good:
            assert isinstance(value, torch.Tensor), f"{name}: {value}"
            assert value.shape == (1, 3, 224, 224) and value.dtype == torch.uint8
        else:
            assert isinstance(value, str) and value, name
    reasons = dict(zip(broken, [value for _, value in items[len(good):]]))
    assert "FileNotFoundError" in reasons["missing"]
    assert "0 bytes" in reasons["empty"]
    assert "truncated" in reasons["truncated"]
    assert "UnidentifiedImageError" in reasons["text"]


def test_cmyk_converts_like_pil(awkward_images: Awkward) -> None:
    good, _ = awkward_images
    with Image.open(good["cmyk"]) as image:
        assert image.mode == "CMYK"
        image.load()
        assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB")))


def test_collate_stacks_good_and_carries_failures() -> None:
    good = torch.zeros((10, 3, 224, 224), dtype=torch.uint8)
    batch = collate_crops([(3, good), (5, "OSError: bad"), (7, good + 1)], crops=10)
    assert batch.indices.tolist() == [3, 7] and batch.crops.shape == (2, 10, 3, 224, 224)
    assert batch.failed_indices == [5] and batch.errors == ["OSError: bad"] and len(batch) == 3
    assert torch.equal(batch.crops[1], good + 1)
    empty = collate_crops([(1, "x")], crops=10)
    assert empty.crops.shape == (0, 10, 3, 224, 224) and empty.indices.dtype == torch.int64


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_keeps_order(awkward_images: Awkward, workers: int) -> None:
    good, broken = awkward_images
    paths = list(good.values())[:3] + [broken["missing"]]
    loader = make_loader(ImageDataset([10, 11, 12, 13], paths, crops=1), batch_size=3, workers=workers,
                         pin_memory=False)
    batches = list(loader)
    assert [b.indices.tolist() for b in batches] == [[10, 11, 12], []]
    assert batches[1].failed_indices == [13]
